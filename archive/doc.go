// Package archive is the file sink for finished sagas: a Writer appends
// each saga with its full history to zstd-compressed JSON Lines files in
// a directory, durably, so that the caller may remove the sagas from the
// engine once Write returns; Read and Find read them back, and
// `sagactl archive show FILE [ID]` shows them.
//
// # Record format, version 1
//
// One line is one saga, a JSON object:
//
//	{"v":1,"saga":{...},"history":[...]}
//
// Its fields:
//
//   - v: the format version, 1. A reader refuses other versions
//     (ErrVersion). Fields may be added to version 1; readers ignore the
//     ones they do not know. Anything else is a new version.
//   - saga: the saga as the admin API's GET /v1/sagas/{id} shows it
//     (admin.SagaJSON: id, definition, version, state, steps, created_at,
//     updated_at, ...), plus idempotency_key, meta, input (base64) and
//     seq, the number of transitions applied to it.
//   - history: every transition, as the API shows it (admin.HistoryJSON:
//     seq, log_index, at, kind, step, attempt, error, ...), but the
//     attempt records that the saga's history cap dropped: the saga's
//     history_dropped (count, first_seq, last_seq) summarises those,
//     and their seqs are missing from the history.
//
// Times are RFC 3339 in UTC.
//
// # Files
//
// A file is named NNNNNNNNNN-YYYYMMDDTHHMMSS.nnnnnnnnnZ.jsonl.zst: a
// sequence number, one more than the directory's last, then the UTC time
// it was created. Names sort in the order written (the sequence decides,
// so a clock that goes back cannot reorder them). A Writer never appends
// to a file it did not create; it rotates to a new file once a file
// reaches Options.MaxFileSize bytes or Options.MaxFileRecords records.
//
// Each Write is one batch (several, for a Write over 256 MiB of lines:
// the reader decodes at most 1 GiB of a batch), all in one file: a zstd
// skippable frame holding the batch's
// length, record count and CRC-32C, then one zstd frame of its lines (see
// format.go). Every file, even one whose Write is still running, is a
// valid zstd stream of JSON Lines to any zstd tool, which skips the
// batch headers:
//
//	zstd -dc 0000000001-*.jsonl.zst | jq .saga.id
//
// # Durability and crashes
//
// Write returns nil only after the file is fsynced, and its directory
// when the batch started the file. A failed write or fsync fails the
// Write (nothing of the batch counts as archived) and poisons the
// Writer (ErrPoisoned).
//
// A crash during a Write can leave the file cut inside that batch, or at
// its full length with the batch's sectors that never reached the disk
// reading as zeros; that batch was never acknowledged. Read reports it as ErrTornTail after every
// intact record; ReadOptions.TolerateTornTail ends the file there
// quietly. A batch is all or nothing: the reader yields none of a torn
// or corrupt batch. Other damage is ErrCorrupt.
//
// # Duplicates
//
// A saga can be archived twice: a Write that failed after its data
// reached the file, or a crash after Write returned and before the
// sagas were removed, then archiving them again. Two copies have the
// same saga id; the one with the highest seq is the latest, and Find
// returns it. A finished saga does not change, so copies of it with the
// same seq are the same. An id is free again once its saga is removed:
// records of a later saga with the id have a later created_at, and Find
// returns the latest saga's.
package archive
