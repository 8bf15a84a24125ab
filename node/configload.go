package node

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/ferrynet/ferry/internal/wording"
)

// Reading ferry.yaml in the operator's words. yaml.v3 alone says "field
// netwrok not found in type node.Config" or "cannot unmarshal !!int `5`
// into []string"; the loader walks the YAML tree against Config first and
// says instead, with the file and line:
//
//	ferry.yaml:2: unknown key `netwrok` (did you mean `network`?)
//	ferry.yaml:5: `listen` must be a list of multiaddrs, got a number (5)
//
// It also remembers where each key was set (the file and line, an
// environment variable, a flag), so that Validate's errors say where to
// look: `FERRY_LIMITS_MAX_MESSAGE_BYTES: limits.max_message_bytes: 5 is
// outside 1024..67108864`.

// keyWords say what a key's value is, where its Go type says too little.
var keyWords = map[string]string{
	"listen":    "a list of multiaddrs",
	"bootstrap": "a list of multiaddrs ending in /p2p/<peer id>",
	"partners":  "a list of peer ids",
	"members":   "a list of peer ids",
	"reviewer":  "a peer id",
	"reviewers": "a list of peer ids",
}

// decodeYAML reads the ferry.yaml at path (its bytes b) over c.
func decodeYAML(path string, b []byte, c *Config) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return yamlSyntax(path, err)
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil // an empty file: the defaults
	}
	root := resolveAlias(doc.Content[0])
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return nil
	}
	if root.Kind != yaml.MappingNode {
		return &ConfigError{Where: at(path, root.Line), phrased: true,
			Err: fmt.Errorf("the file must be a mapping of keys (name: A, listen: [...], ...), got %s", nodeWords(root))}
	}
	if c.where == nil {
		c.where = map[string]string{}
	}
	if err := checkMapping(path, root, reflect.TypeOf(*c), "", c.where); err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		// The walk above accepts only what decodes; should yaml.v3 still
		// refuse, say so without its Go type names.
		return &ConfigError{Where: path, phrased: true, Err: fmt.Errorf("cannot be read: %s", yamlWords(err))}
	}
	return nil
}

func at(path string, line int) string { return path + ":" + strconv.Itoa(line) }

func resolveAlias(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// checkMapping checks the keys of m against the struct type t (prefix: the
// dotted key of m), recording where each key is set.
func checkMapping(path string, m *yaml.Node, t reflect.Type, prefix string, where map[string]string) error {
	seen := map[string]int{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := resolveAlias(m.Content[i]), resolveAlias(m.Content[i+1])
		if k.Kind == yaml.ScalarNode && k.Tag == "!!merge" {
			return &ConfigError{Key: strings.TrimSuffix(prefix, "."), Where: at(path, k.Line), phrased: true,
				Err: errors.New("merge keys (<<) are not taken; write the keys out")}
		}
		if k.Kind != yaml.ScalarNode {
			return &ConfigError{Key: strings.TrimSuffix(prefix, "."), Where: at(path, k.Line), phrased: true,
				Err: fmt.Errorf("a key must be a name, got %s", nodeWords(k))}
		}
		key := prefix + k.Value
		if first, ok := seen[k.Value]; ok {
			return &ConfigError{Key: key, Where: at(path, k.Line), phrased: true,
				Err: fmt.Errorf("%s is set twice (first at line %d)", wording.Quote(key), first)}
		}
		seen[k.Value] = k.Line
		f, ok := yamlField(t, k.Value)
		if !ok {
			return &ConfigError{Key: key, Where: at(path, k.Line), phrased: true, Err: errors.New(unknownKey(t, prefix, k.Value))}
		}
		where[key] = at(path, k.Line)
		if f.Type.Kind() == reflect.Struct {
			switch {
			case v.Kind == yaml.MappingNode:
				if err := checkMapping(path, v, f.Type, key+".", where); err != nil {
					return err
				}
			case v.Kind == yaml.ScalarNode && v.Tag == "!!null":
				// `nats:` with nothing under it: the defaults
			default:
				return &ConfigError{Key: key, Where: at(path, v.Line), phrased: true,
					Err: fmt.Errorf("%s must be a section of keys (%s), got %s", wording.Quote(key), sectionExample(f.Type), nodeWords(v))}
			}
			continue
		}
		err := v.Decode(reflect.New(f.Type).Interface())
		if err == nil && isInt(f.Type) && v.Kind == yaml.ScalarNode && v.ShortTag() == "!!float" {
			// yaml.v3 would cut 1.5 to 1 in silence.
			if x, perr := strconv.ParseFloat(v.Value, 64); perr != nil || x != math.Trunc(x) {
				err = errors.New("not a whole number")
			}
		}
		if err != nil {
			return &ConfigError{Key: key, Where: at(path, v.Line), phrased: true, Err: fmt.Errorf("%s must be %s, got %s%s",
				wording.Quote(key), valueWords(key, f.Type), nodeWords(v), listHint(f.Type, v))}
		}
		if v.Kind == yaml.SequenceNode {
			for j, e := range v.Content {
				where[fmt.Sprintf("%s[%d]", key, j)] = at(path, e.Line)
			}
		}
	}
	return nil
}

func isInt(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	}
	return false
}

// yamlField finds the field of t whose yaml name is name.
func yamlField(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		if tag := strings.Split(f.Tag.Get("yaml"), ",")[0]; f.IsExported() && tag == name {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func yamlNames(t reflect.Type) []string {
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		if tag := strings.Split(f.Tag.Get("yaml"), ",")[0]; f.IsExported() && tag != "" && tag != "-" {
			out = append(out, tag)
		}
	}
	return out
}

// unknownKey words an unknown key: the nearest key of its section, else a
// key of that name (or near it) in another section, else the keys there are.
func unknownKey(t reflect.Type, prefix, name string) string {
	msg := "unknown key " + wording.Quote(prefix+name)
	if s := wording.Suggest(name, yamlNames(t)); s != "" {
		return msg + " (did you mean " + wording.Quote(prefix+s) + "?)"
	}
	var all []string
	var walk func(t reflect.Type, p string)
	walk = func(t reflect.Type, p string) {
		for _, n := range yamlNames(t) {
			f, _ := yamlField(t, n)
			if f.Type.Kind() == reflect.Struct {
				walk(f.Type, p+n+".")
			} else {
				all = append(all, p+n)
			}
		}
	}
	walk(reflect.TypeOf(Config{}), "")
	var last []string
	for _, k := range all {
		last = append(last, k[strings.LastIndex(k, ".")+1:])
	}
	if s := wording.Suggest(name, last); s != "" {
		for _, k := range all {
			if strings.HasSuffix(k, "."+s) || k == s {
				return msg + " (did you mean " + wording.Quote(k) + "?)"
			}
		}
	}
	names := yamlNames(t)
	sort.Strings(names)
	where := "the keys are "
	if prefix != "" {
		where = "the keys of " + wording.Quote(strings.TrimSuffix(prefix, ".")) + " are "
	}
	return msg + "; " + where + strings.Join(names, ", ")
}

func sectionExample(t reflect.Type) string {
	names := yamlNames(t)
	if len(names) == 0 {
		return "key: value lines under it"
	}
	return "e.g. " + names[0] + ": ... on the lines under it"
}

// valueWords says what a value of key (of type t) must be.
func valueWords(key string, t reflect.Type) string {
	if w, ok := keyWords[key]; ok {
		return w
	}
	switch t.Kind() {
	case reflect.String:
		return "text"
	case reflect.Int, reflect.Int64, reflect.Int32:
		return "a whole number"
	case reflect.Float64, reflect.Float32:
		return "a number"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice:
		return "a list of text values"
	case reflect.Map:
		return "a section of keys"
	}
	return "another kind of value"
}

// nodeWords says what a YAML node holds, quoting a short scalar.
func nodeWords(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a section of keys"
	case yaml.ScalarNode:
		v := n.Value
		if len(v) > 40 {
			v = v[:40] + "…"
		}
		switch n.ShortTag() {
		case "!!int", "!!float":
			return "a number (" + v + ")"
		case "!!bool":
			return "true or false (" + v + ")"
		case "!!null":
			return "nothing"
		default:
			return "text (" + strconv.Quote(v) + ")"
		}
	}
	return "something else"
}

// listHint tells how to write a list of one, when a list was given a
// single value.
func listHint(t reflect.Type, v *yaml.Node) string {
	if t.Kind() == reflect.Slice && v.Kind == yaml.ScalarNode && v.ShortTag() != "!!null" {
		return "; a list of one is written [" + v.Value + "]"
	}
	return ""
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// yamlSyntax words a YAML syntax error with the file and line.
func yamlSyntax(path string, err error) error {
	msg := err.Error()
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &ConfigError{Where: at(path, line), phrased: true, Err: fmt.Errorf("not valid YAML: %s", m[2])}
	}
	return &ConfigError{Where: path, phrased: true, Err: fmt.Errorf("not valid YAML: %s", strings.TrimPrefix(msg, "yaml: "))}
}

// yamlWords strips yaml.v3's Go type names from an error it gave after
// the walk accepted the file (it should not happen).
func yamlWords(err error) string {
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		return "a value has the wrong type (" + goTypeName.ReplaceAllString(strings.TrimPrefix(te.Errors[0], "yaml: "), "a value") + ")"
	}
	return goTypeName.ReplaceAllString(strings.TrimPrefix(err.Error(), "yaml: "), "a value")
}

var goTypeName = regexp.MustCompile(`(into|in type) \S+|!!\w+ `)

// SetFrom sets a key from text given at where (an environment variable or
// a flag, as the user wrote it: FERRY_NATS_URL, --nats-url), and
// remembers where, so that errors about the key name it.
func (c *Config) SetFrom(s Setting, where, val string) error {
	if c.where == nil {
		c.where = map[string]string{}
	}
	c.where[s.Key] = where
	if s.field.Kind() == reflect.Slice { // the file's lines no longer hold the list
		for i := 0; ; i++ {
			k := fmt.Sprintf("%s[%d]", s.Key, i)
			if _, ok := c.where[k]; !ok {
				break
			}
			delete(c.where, k)
		}
	}
	if err := s.Set(val); err != nil {
		var ce *ConfigError
		if errors.As(err, &ce) {
			ce.Where = where
		}
		return err
	}
	return nil
}

// Where says where key was set (ferry.yaml:3, FERRY_NATS_URL, --nats-url),
// or "" for a default. A key of a list element (listen[1]) falls back to
// the list's.
func (c *Config) Where(key string) string {
	if w, ok := c.where[key]; ok {
		return w
	}
	if i := strings.IndexByte(key, '['); i > 0 {
		return c.where[key[:i]]
	}
	return ""
}
