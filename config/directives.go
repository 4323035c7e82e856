package config

import (
	"reflect"
	"strconv"
	"strings"
	"time"
)

// DirectiveValue is one directive of an effective policy as an operator
// reads it: the value as it would be written in the file, and where it was
// set.
type DirectiveValue struct {
	Name  string
	Value string
	// Pos is where the value was written; zero for a built-in default.
	Pos Position
	Set bool
}

// Directives lists every directive of s in the order of the <domain>
// table, with its value in the file's notation. Secrets (auth-password)
// are never shown. It answers "why does this queue behave like that": the
// admin API's settings view.
func (s *DomainSettings) Directives() []DirectiveValue {
	out := make([]DirectiveValue, 0, len(domainTable.rows))
	for _, r := range domainTable.rows {
		if r.field == nil {
			continue
		}
		f := reflect.ValueOf(r.field(s)).Elem()
		out = append(out, DirectiveValue{
			Name:  r.name,
			Value: formatValue(r.name, f.FieldByName("Value").Interface()),
			Pos:   f.FieldByName("Pos").Interface().(Position),
			Set:   f.FieldByName("Set").Bool(),
		})
	}
	return out
}

// formatValue writes a directive's value in the config's own notation.
func formatValue(name string, v any) string {
	switch x := v.(type) {
	case string:
		if name == "auth-password" && x != "" {
			return "(hidden)"
		}
		return x
	case int:
		if x == 0 && name == "max-errors-per-connection" {
			return "unlimited"
		}
		return strconv.Itoa(x)
	case bool:
		if name == "type" {
			if x {
				return "discard"
			}
			return "smtp"
		}
		if x {
			return "yes"
		}
		return "no"
	case time.Duration:
		return FormatDuration(x)
	case []time.Duration:
		parts := make([]string, len(x))
		for i, d := range x {
			parts[i] = FormatDuration(d)
		}
		return strings.Join(parts, ",")
	case Rate:
		return x.String()
	case HostList:
		return x.String()
	case SourceIPLimits:
		return x.String()
	case SourceIPRates:
		return x.String()
	case []DomainKey:
		parts := make([]string, len(x))
		for i, k := range x {
			parts[i] = k.Selector + "," + k.Domain + "," + k.KeyFile
		}
		return strings.Join(parts, "; ")
	}
	// A new value type must be added above; until then it still shows.
	return reflect.ValueOf(v).String()
}
