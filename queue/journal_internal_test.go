package queue

import "testing"

// TestJournalWatermark: the watermark stays at the first number of the
// oldest batch not yet committed, whatever order the batches commit in,
// and numbers a batch takes after it began stay covered by its run.
func TestJournalWatermark(t *testing.T) {
	j := &journal{next: 1, mark: 1, moved: make(chan struct{}, 1)}
	want := func(mark uint64, signalled bool) {
		t.Helper()
		if got := j.watermark(); got != mark {
			t.Fatalf("watermark %d, want %d", got, mark)
		}
		select {
		case <-j.moved:
			if !signalled {
				t.Fatal("moved signalled, but the watermark did not move")
			}
		default:
			if signalled {
				t.Fatal("the watermark moved without a signal")
			}
		}
	}
	pend, p1 := j.begin(1) // the committer's batch: 1
	put, p2 := j.begin(3)  // a Put: 2, 3, 4
	if p1 != 1 || p2 != 2 {
		t.Fatalf("runs start at %d and %d, want 1 and 2", p1, p2)
	}
	if n := j.take(2); n != 5 { // two more for the committer's batch: 5, 6
		t.Fatalf("take gave %d, want 5", n)
	}
	put2, p3 := j.begin(1) // another Put: 7
	if p3 != 7 {
		t.Fatalf("third run starts at %d, want 7", p3)
	}
	want(1, false)
	j.end(put) // 2-4 committed, but 1 may still commit
	want(1, false)
	j.end(pend) // 1-6 committed; 7 is open
	want(7, true)
	j.end(put2)
	want(8, true)
	j.end(nil) // no run: nothing happens
	want(8, false)
	last, n := j.begin(2)
	if n != 8 {
		t.Fatalf("run after all ended starts at %d, want 8", n)
	}
	want(8, false)
	j.end(last)
	want(10, true)
	if len(j.open) != 0 {
		t.Fatalf("%d runs still open", len(j.open))
	}
}
