package listener

import (
	"bytes"
	"fmt"
	"net/http"
	"runtime/pprof"
	"strconv"
	"time"
)

// maxProfileSeconds bounds a CPU profile request.
const maxProfileSeconds = 300

// profile serves Go runtime profiles for go tool pprof, to admins only:
// GET /debug/pprof/profile?seconds=N is a CPU profile of the next N
// seconds (30 by default), GET /debug/pprof/NAME a named profile (heap,
// allocs, goroutine, mutex, block, threadcreate). net/http/pprof is not
// used because importing it registers handlers on http.DefaultServeMux.
func (a *Admin) profile(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if name != "profile" {
		p := pprof.Lookup(name)
		if p == nil {
			writeError(w, http.StatusNotFound, fmt.Sprintf("no profile %q (profile, heap, allocs, goroutine, mutex, block, threadcreate)", name))
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		if err := p.WriteTo(w, 0); err != nil {
			a.opts.Logger.Warn("writing a profile failed", "profile", name, "err", err)
		}
		return
	}
	secs := 30
	if s := r.URL.Query().Get("seconds"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxProfileSeconds {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("seconds=%q: want 1 to %d", s, maxProfileSeconds))
			return
		}
		secs = n
	}
	// The profile is collected in memory and written once it is complete:
	// the answer then starts, like every other, when its data is ready,
	// and admit's write deadline bounds writing it, not the profiling. Its
	// size grows with the number of distinct call stacks sampled, not with
	// the duration, so memory is not what seconds= trades.
	var buf bytes.Buffer
	if err := pprof.StartCPUProfile(&buf); err != nil {
		// Only one CPU profile can run at a time.
		writeError(w, http.StatusConflict, "cannot start a CPU profile: "+err.Error())
		return
	}
	a.opts.Logger.Info("admin CPU profile", "seconds", secs, "client", r.RemoteAddr)
	t := time.NewTimer(time.Duration(secs) * time.Second)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
		// The client is gone: stop, so that the next request may profile.
		pprof.StopCPUProfile()
		return
	}
	pprof.StopCPUProfile()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	w.Write(buf.Bytes())
}
