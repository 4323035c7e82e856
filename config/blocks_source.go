package config

import (
	"fmt"
	"reflect"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

// sourceBlock reads <source CIDR|NAME>. Blocks for the same CIDR or name
// merge; a directive set in both is an error.
func (b *builder) sourceBlock(n *node) {
	arg, ok := b.blockName(n, "CIDR or source name")
	if !ok {
		return
	}
	src := &Source{Pos: n.Pos}
	a := n.Args[0]
	looksLikeCIDR := arg != "" && (arg[0] >= '0' && arg[0] <= '9' || strings.ContainsAny(arg, ":/"))
	if looksLikeCIDR {
		p, ok := b.cidr(a, "<source>")
		if !ok {
			return
		}
		src.Prefix = p
	} else {
		if !b.validName(n, arg) {
			return
		}
		src.Name = arg
	}
	settings := DefaultSourceSettings()
	for _, c := range n.Children {
		if b.dispatch(c, scopeSource) {
			sourceTable.apply(b, &settings, c)
		}
	}
	key := src.Prefix.String()
	if src.Named() {
		key = "name:" + strings.ToLower(src.Name)
	}
	if prev, ok := b.sources[key]; ok {
		b.mergeInto(&prev.Settings, &settings, n)
		return
	}
	src.Settings = settings
	b.sources[key] = src
	b.cfg.Sources = append(b.cfg.Sources, src)
}

// removeHeader reads remove-header: repeatable, each line adds a header
// name.
func removeHeader(b *builder, s *SourceSettings, n *node) {
	var h Setting[string]
	setOne(b, &h, n, headerName)
	if h.Set {
		pos := s.RemoveHeaders.Pos
		if !s.RemoveHeaders.Set {
			pos = n.Pos
		}
		list := append(append([]string(nil), s.RemoveHeaders.Value...), h.Value)
		s.RemoveHeaders = Setting[[]string]{Value: list, Pos: pos, Set: true}
	}
}

// repeatableFields are the settings whose directive may be repeated; when two
// blocks for the same key both set one, their lists are joined.
var repeatableFields = map[string]bool{"RemoveHeaders": true, "DomainKeys": true}

// mergeInto folds the settings of a second block for the same key into the
// first, reporting directives both set.
func (b *builder) mergeInto(dst, src any, n *node) {
	d := reflect.ValueOf(dst).Elem()
	s := reflect.ValueOf(src).Elem()
	for i := 0; i < d.NumField(); i++ {
		sf := s.Field(i)
		if !sf.Interface().(interface{ isSet() bool }).isSet() {
			continue
		}
		df := d.Field(i)
		if repeatableFields[d.Type().Field(i).Name] {
			dv, sv := df.FieldByName("Value"), sf.FieldByName("Value")
			if df.Interface().(interface{ isSet() bool }).isSet() {
				joined := reflect.AppendSlice(reflect.AppendSlice(reflect.MakeSlice(dv.Type(), 0, dv.Len()+sv.Len()), dv), sv)
				dv.Set(joined)
				continue
			}
		}
		if df.Interface().(interface{ isSet() bool }).isSet() {
			if reflect.DeepEqual(df.FieldByName("Value").Interface(), sf.FieldByName("Value").Interface()) {
				// The same value again, as when a domain is in two
				// macros whose blocks agree: nothing to choose between.
				continue
			}
			spos := sf.FieldByName("Pos").Interface().(Position)
			dpos := df.FieldByName("Pos").Interface().(Position)
			b.errorf(spos, "%s is already set for %s at %s", b.directiveAt[spos], n.label(), shortPos(dpos, spos))
			continue
		}
		df.Set(sf)
	}
}

// mergeOver folds the block of its own for a domain (src) into the
// settings macro blocks gave it (dst): src's directives win, and each one
// that replaces a different value is a warning naming both lines.
func (b *builder) mergeOver(dst, src *DomainSettings, n *node) {
	d := reflect.ValueOf(dst).Elem()
	s := reflect.ValueOf(src).Elem()
	for i := 0; i < d.NumField(); i++ {
		sf, df := s.Field(i), d.Field(i)
		if !sf.Interface().(interface{ isSet() bool }).isSet() {
			continue
		}
		if df.Interface().(interface{ isSet() bool }).isSet() && !reflect.DeepEqual(df.FieldByName("Value").Interface(), sf.FieldByName("Value").Interface()) {
			spos := sf.FieldByName("Pos").Interface().(Position)
			dpos := df.FieldByName("Pos").Interface().(Position)
			b.warnf(spos, "%s for %s replaces the value a domain macro's block gave it at %s: a block naming the domain itself wins", b.directiveAt[spos], n.label(), shortPos(dpos, spos))
		}
		df.Set(sf)
	}
}

func (b *builder) userBlock(n *node) {
	name, ok := b.blockName(n, "user name")
	if !ok {
		return
	}
	key := strings.ToLower(name)
	if prev, dup := b.users[key]; dup {
		b.errorf(n.Pos, "<smtp-user %s> is already defined at %s", name, shortPos(prev.Pos, n.Pos))
		return
	}
	u := &User{Pos: n.Pos, Name: name}
	userTable.fill(u)
	for _, c := range n.Children {
		if b.dispatch(c, scopeUser) {
			userTable.apply(b, u, c)
		}
	}
	switch {
	case u.Password.Set && u.PasswordHash.Set:
		b.errorf(u.PasswordHash.Pos, "smtp-user %s: set password or password-hash, not both", name)
	case !u.Password.Set && !u.PasswordHash.Set && !hasChild(n, "password", "password-hash"):
		// (a password line with a bad value was reported already)
		b.errorf(n.Pos, "<smtp-user %s> has no password-hash (or password)", name)
	}
	b.users[key] = u
	b.cfg.Users = append(b.cfg.Users, u)
}

// claimName registers a VMTA or pool name; they share one name space.
func (b *builder) claimName(n *node, name string) bool {
	key := strings.ToLower(name)
	if prev, dup := b.names[key]; dup {
		b.errorf(n.Pos, "%s: the name %s is already used at %s (virtual MTAs and pools share one name space)", n.label(), name, shortPos(prev, n.Pos))
		return false
	}
	b.names[key] = n.Pos
	return true
}

// bcryptHash reads a password-hash.
func bcryptHash(s string) (string, error) {
	if _, err := bcrypt.Cost([]byte(s)); err != nil {
		return "", fmt.Errorf("not a bcrypt hash ($2a$…); tern hash-password prints one")
	}
	return s, nil
}

// authMethod reads PowerMTA's authentication-method: `password` is what
// Tern does; `system` (the host's accounts) is not available.
func authMethod(b *builder, u *User, n *node) {
	a, ok := b.single(n)
	if !ok {
		return
	}
	if !strings.EqualFold(a.Text, "password") {
		b.errorf(a.Pos, "authentication-method: Tern checks the password or password-hash of the <smtp-user> only; write authentication-method password (or leave it out) and give the user a password-hash")
	}
}
