package config

import (
	"sort"
	"strings"
)

// scope is the kind of block a directive stands in.
type scope int

const (
	scopeTop scope = iota
	scopeSource
	scopeUser
	scopeVMTA
	scopePool
	scopeDomain
	scopePatternList
	scopeSMTPPatternList
	scopeAcctFile
	scopeSpool
	scopeMXRollupList
	scopeListener
)

var scopeLabels = [...]string{
	scopeTop:             "the top level",
	scopeSource:          "<source>",
	scopeUser:            "<smtp-user>",
	scopeVMTA:            "<virtual-mta>",
	scopePool:            "<virtual-mta-pool>",
	scopeDomain:          "<domain>",
	scopePatternList:     "<pattern-list>",
	scopeSMTPPatternList: "<smtp-pattern-list>",
	scopeAcctFile:        "<acct-file>",
	scopeSpool:           "<spool>",
	scopeMXRollupList:    "<mx-rollup-list>",
	scopeListener:        "<smtp-listener>",
}

// blockScopes maps each block to the scopes it may be opened in and the
// scope of its body.
var blockScopes = map[string]struct {
	parents []scope
	body    scope
}{
	"source":            {[]scope{scopeTop}, scopeSource},
	"smtp-user":         {[]scope{scopeTop}, scopeUser},
	"virtual-mta":       {[]scope{scopeTop}, scopeVMTA},
	"virtual-mta-pool":  {[]scope{scopeTop}, scopePool},
	"domain":            {[]scope{scopeTop, scopeVMTA, scopePool}, scopeDomain},
	"pattern-list":      {[]scope{scopeTop, scopePatternList}, scopePatternList},
	"smtp-listener":     {[]scope{scopeTop}, scopeListener},
	"smtp-pattern-list": {[]scope{scopeTop}, scopeSMTPPatternList},
	"acct-file":         {[]scope{scopeTop}, scopeAcctFile},
	"spool":             {[]scope{scopeTop}, scopeSpool},
	"mx-rollup-list":    {[]scope{scopeTop}, scopeMXRollupList},
}

// scopeList formats where something is allowed: "at the top level",
// "in <virtual-mta>, <virtual-mta-pool> or <domain>".
func scopeList(scopes []scope) string {
	var in []string
	top := false
	for _, s := range scopes {
		if s == scopeTop {
			top = true
			continue
		}
		in = append(in, scopeLabels[s])
	}
	list := ""
	if len(in) > 0 {
		list = "in " + in[len(in)-1]
		if len(in) > 1 {
			list = "in " + strings.Join(in[:len(in)-1], ", ") + " or " + in[len(in)-1]
		}
	}
	switch {
	case top && list != "":
		return "at the top level or " + list
	case top:
		return "at the top level"
	}
	return list
}

// scopeWhere names a scope as a place: "at the top level", "in <source>".
func scopeWhere(sc scope) string {
	if sc == scopeTop {
		return "at the top level"
	}
	return "in " + scopeLabels[sc]
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
