package queue

import (
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
)

func TestStateSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	open := func() *Queue {
		q, err := Open(Options{Dir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		return q
	}
	q := open()
	for name, v := range map[string]string{"shape/a": "1", "shape/b": "2", "other/c": "3"} {
		if err := q.PutState(name, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.PutState("shape/a", []byte("one")); err != nil {
		t.Fatal(err)
	}
	if err := q.DeleteState("shape/b"); err != nil {
		t.Fatal(err)
	}
	if err := q.DeleteState("never/there"); err != nil {
		t.Errorf("deleting a missing name: %v", err)
	}
	if err := q.PutState("", nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("empty name: %v, want ErrInvalid", err)
	}
	if err := q.PutState(strings.Repeat("x", maxStateName+1), nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("long name: %v, want ErrInvalid", err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q = open()
	defer q.Close()
	got, err := q.States("shape/")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || string(got["shape/a"]) != "one" {
		t.Errorf("States(shape/) = %q, want only shape/a=one", got)
	}
	if n := q.Totals().Messages; n != 0 {
		t.Errorf("state records counted as %d messages", n)
	}
}
