package fakeclock

import (
	"testing"
	"time"
)

func TestTimersFireInOrder(t *testing.T) {
	c := New(time.Unix(0, 0))
	a := c.NewTimer(2 * time.Second)
	b := c.NewTimer(time.Second)
	s := c.NewTimer(3 * time.Second)
	if !s.Stop() || c.Waiting() != 2 {
		t.Fatal("stop")
	}
	if !c.AdvanceToNext() {
		t.Fatal("no timer")
	}
	select {
	case <-b.C():
	default:
		t.Fatal("1s timer did not fire")
	}
	select {
	case <-a.C():
		t.Fatal("2s timer fired early")
	default:
	}
	c.Advance(time.Second)
	<-a.C()
	if c.AdvanceToNext() || c.Now() != time.Unix(2, 0) {
		t.Fatalf("now %v", c.Now())
	}
}
