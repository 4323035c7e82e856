package listener

import (
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
	w.Header().Set("Content-Type", "application/octet-stream")
	if err := pprof.StartCPUProfile(w); err != nil {
		// Only one CPU profile can run at a time.
		writeError(w, http.StatusConflict, "cannot start a CPU profile: "+err.Error())
		return
	}
	a.opts.Logger.Info("admin CPU profile", "seconds", secs, "client", r.RemoteAddr)
	select {
	case <-time.After(time.Duration(secs) * time.Second):
	case <-r.Context().Done():
	}
	pprof.StopCPUProfile()
}
