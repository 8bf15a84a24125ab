// Package wording says what is wrong with an app's or an operator's input in
// their words, not Go's: `since` must be a non-negative integer, got -1,
// where encoding/json says "cannot unmarshal number -1 into Go struct field
// ChangesRequest.since of type uint64".
//
// DecodeJSON is the one strict decoder of the JSON bodies apps and
// operators send (NATS requests, admin API bodies): unknown members are
// refused by name, with the nearest known one; a value of the wrong type
// names its field, the type expected and the value given. Suggest finds
// the nearest known word (also for ferry.yaml keys). GoInternals is the
// check the bad-input tests run over every message they provoke.
//
// The package decodes and words errors; it must not decide what a request
// means (the services do).
package wording

import (
	"regexp"
	"strings"
)

// internals matches what only a Go programmer would read in an error: the
// words of encoding/json's and yaml's type errors, Go type names (builtin,
// composite, package-qualified), YAML tags, and fmt's marks of a bad verb.
var internals = regexp.MustCompile(strings.Join([]string{
	`Go (struct field|value of type)`,
	`\bjson: `,
	`\byaml: `,
	`(?i:unmarshal)`,
	`interface ?\{\}`,
	`\bmap\[`,
	`\[\](string|byte|int|uint|interface|any|\*?[a-z]+\.)`,
	`\b(u?int(8|16|32|64)?|float(32|64)|uintptr|complex(64|128))\b`,
	`\*?\b[a-z][a-z0-9]*\.[A-Z][a-z0-9]+[A-Za-z0-9]*\b`, // node.Config, *propagate.Request
	`!!(int|str|seq|map|bool|float|null|binary|timestamp)\b`,
	`%!`,
	`<nil>`,
	`\breflect\b`,
	`\bruntime error\b`,
	`\bgoroutine\b`,
}, "|"))

// GoInternals returns the part of msg that speaks Go rather than the
// user's words ("" when none does): a Go type name, encoding/json's or
// yaml's phrasing, a bad fmt verb. A part found within one of echoes (the
// input the message may quote back: a fuzzer's "uint64" as a data type) is
// the user's own text, not counted.
func GoInternals(msg string, echoes ...string) string {
	for _, m := range internals.FindAllString(msg, -1) {
		echoed := false
		for _, e := range echoes {
			if strings.Contains(e, m) {
				echoed = true
				break
			}
		}
		if !echoed {
			return m
		}
	}
	return ""
}

// Suggest returns the candidate nearest to word when it is near enough to
// be a slip of the keyboard (an edit distance of at most a third of the
// word, at least 1, or the same letters in another case) or a part of it
// (timeout for timeout_ms: a word of 4 or more letters that begins a
// candidate, or that a candidate begins), else "".
func Suggest(word string, candidates []string) string {
	best, bestD := "", -1
	for _, c := range candidates {
		if strings.EqualFold(c, word) {
			return c
		}
	}
	lw := strings.ToLower(word)
	for _, c := range candidates {
		lc := strings.ToLower(c)
		if min(len(lw), len(lc)) >= 4 && (strings.HasPrefix(lc, lw) || strings.HasPrefix(lw, lc)) {
			return c
		}
	}
	for _, c := range candidates {
		d := distance(strings.ToLower(word), strings.ToLower(c))
		if bestD < 0 || d < bestD {
			best, bestD = c, d
		}
	}
	if bestD < 0 || bestD > max(1, len(word)/3) {
		return ""
	}
	return best
}

// distance is the Damerau-Levenshtein distance (adjacent swaps count one).
func distance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	d := make([][]int, len(ra)+1)
	for i := range d {
		d[i] = make([]int, len(rb)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(ra); i++ {
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(ra)][len(rb)]
}

// Quote puts a name in backquotes, as messages show keys and fields.
func Quote(name string) string { return "`" + name + "`" }
