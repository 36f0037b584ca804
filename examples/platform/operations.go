package main

// The eight platform operations of the seed plan, with their milestones and
// the compensation handler of each, in order.
type milestone struct {
	name    string
	handler string
}

type operation struct {
	name       string
	milestones []milestone
}

var operations = []operation{
	{"data_ingest_pipeline", []milestone{
		{"ingest", "delete_uploaded_file"},
		{"parse", "mark_file_as_unparsed"},
		{"embed", "delete_embeddings"},
		{"expose", "remove_from_semantic_layer"},
	}},
	{"data_mapping", []milestone{
		{"analyze_source", "revert_source_analysis"},
		{"analyze_target", "revert_target_analysis"},
		{"generate_mapping", "delete_mapping_rules"},
		{"apply_mapping", "revert_transformation"},
		{"validate", "mark_as_invalid"},
	}},
	{"operations_workflow_generation", []milestone{
		{"extract_sop_structure", "revert_sop_parsing"},
		{"analyze_workflow_requirements", "clear_analysis_cache"},
		{"generate_workflow", "delete_workflow_draft"},
		{"validate_workflow", "mark_workflow_as_invalid"},
		{"store_workflow", "delete_stored_workflow"},
	}},
	{"operations_coexistence_analysis", []milestone{
		{"fetch_sop_content", "clear_sop_cache"},
		{"fetch_workflow_content", "clear_workflow_cache"},
		{"analyze_coexistence", "revert_analysis"},
		{"generate_blueprint", "delete_blueprint_draft"},
		{"store_blueprint", "delete_stored_blueprint"},
	}},
	{"interactive_sop_creation", []milestone{
		{"start_wizard", "delete_wizard_session"},
		{"collect_steps", "clear_wizard_state"},
		{"generate_sop", "delete_sop_draft"},
		{"validate_sop", "mark_sop_as_invalid"},
		{"publish_sop", "delete_published_sop"},
	}},
	{"pillar_summaries_compilation", []milestone{
		{"fetch_content_summary", "clear_content_cache"},
		{"fetch_insights_summary", "clear_insights_cache"},
		{"fetch_operations_summary", "clear_operations_cache"},
		{"compile_summaries", "delete_compiled_summary"},
		{"store_summary", "delete_stored_summary"},
	}},
	{"roadmap_generation", []milestone{
		{"analyze_pillar_outputs", "clear_analysis_cache"},
		{"identify_opportunities", "revert_opportunity_identification"},
		{"generate_roadmap_structure", "delete_roadmap_draft"},
		{"apply_business_logic", "revert_business_analysis"},
		{"store_roadmap", "delete_stored_roadmap"},
	}},
	{"poc_proposal_generation", []milestone{
		{"analyze_requirements", "clear_requirements_cache"},
		{"calculate_financials", "revert_financial_calculations"},
		{"assess_risk", "revert_risk_assessment"},
		{"generate_poc_structure", "delete_poc_draft"},
		{"store_poc", "delete_stored_poc"},
	}},
}

func findOperation(name string) (operation, bool) {
	for _, op := range operations {
		if op.name == name {
			return op, true
		}
	}
	return operation{}, false
}
