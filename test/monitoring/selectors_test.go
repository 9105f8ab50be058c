package monitoring

import (
	"slices"
	"strings"
	"testing"
)

// promqlWords are the identifiers of PromQL that are not metric names:
// aggregation operators (which may be followed by by/without before their
// parenthesis), keywords and literals. Functions are recognized by the
// parenthesis that follows them.
var promqlWords = map[string]bool{
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true, "count": true,
	"count_values": true, "bottomk": true, "topk": true, "quantile": true, "limitk": true, "limit_ratio": true,
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"and": true, "or": true, "unless": true, "bool": true, "offset": true, "atan2": true, "inf": true, "nan": true,
}

// labelLists are the words followed by a parenthesised list of label names.
var labelLists = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}

// selectors returns the vector selectors of a PromQL expression (metric
// name with its matchers, as written), in order, without duplicates. An
// alert's expression is rightly empty while all is well (x > 0); its
// selectors are what must return series. The full parse is left to
// Prometheus and promtool, which the tests run on every expression; this
// small lexer only has to find the selectors in what they accept. (The
// promql parser module would pull Prometheus's own dependency set into
// go.mod, upgrading shared dependencies.)
func selectors(expr string) []string {
	var out []string
	isStart := func(c byte) bool { return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	isPart := func(c byte) bool { return isStart(c) || c >= '0' && c <= '9' }
	skipSpace := func(i int) int {
		for i < len(expr) && strings.ContainsRune(" \t\r\n", rune(expr[i])) {
			i++
		}
		return i
	}
	// skipString returns the index after the quoted string starting at i.
	skipString := func(i int) int {
		q := expr[i]
		for i++; i < len(expr) && expr[i] != q; i++ {
			if expr[i] == '\\' && q != '`' {
				i++
			}
		}
		return min(i+1, len(expr))
	}
	// closing returns the index after the bracket that closes the one at
	// i, skipping quoted strings.
	closing := func(i int, open, close byte) int {
		depth := 0
		for i < len(expr) {
			switch c := expr[i]; {
			case c == '"' || c == '\'' || c == '`':
				i = skipString(i)
				continue
			case c == open:
				depth++
			case c == close:
				if depth--; depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return len(expr)
	}
	add := func(s string) {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			i = skipString(i)
		case c == '[':
			i = closing(i, '[', ']')
		case c == '{': // a selector without a metric name
			end := closing(i, '{', '}')
			add(expr[i:end])
			i = end
		case c >= '0' && c <= '9' || c == '.':
			for i < len(expr) && (isPart(expr[i]) || expr[i] == '.') {
				i++ // numbers, durations, 1e3
			}
		case isStart(c):
			j := i
			for j < len(expr) && isPart(expr[j]) {
				j++
			}
			word := expr[i:j]
			next := skipSpace(j)
			switch {
			case labelLists[word]:
				if next < len(expr) && expr[next] == '(' {
					j = closing(next, '(', ')')
				}
			case promqlWords[word]:
			case next < len(expr) && expr[next] == '(': // a function
			case next < len(expr) && expr[next] == '{':
				j = closing(next, '{', '}')
				add(word + expr[next:j])
			default:
				add(word)
			}
			i = j
		default:
			i++
		}
	}
	return out
}

// metricName is the name of a selector (empty for {__name__=...}).
func metricName(sel string) string {
	if i := strings.IndexByte(sel, '{'); i >= 0 {
		return sel[:i]
	}
	return sel
}

func TestSelectors(t *testing.T) {
	for expr, want := range map[string][]string{
		`sum by (namespace, pod) (rate(a_total{result="accepted"}[5m])) / sum by (namespace, pod) (b) > 0.1 unless sum by (namespace, pod) (b) < 100`: {`a_total{result="accepted"}`, "b"},
		`process_open_fds / process_max_fds > 0.85 and on (namespace, pod) socketserver_max_connections`:                                              {"process_open_fds", "process_max_fds", "socketserver_max_connections"},
		`time() - x_seconds > y_seconds + 120`:                                           {"x_seconds", "y_seconds"},
		`histogram_quantile(0.99, sum by (le, command) (rate(h_bucket{a=~"x}[y"}[1m])))`: {`h_bucket{a=~"x}[y"}`},
		`a / on (pod) group_left (node) b offset 5m`:                                     {"a", "b"},
		`count({__name__="up"}) by (job)`:                                                {`{__name__="up"}`},
		`c{type="Degraded", status="True"} == 1`:                                         {`c{type="Degraded", status="True"}`},
		`deriv(p[15m]) > 0 and p > 1e4`:                                                  {"p"},
		`label_replace(a, "dst", "$1 b{c}", "src", "(.*)")`:                              {"a"},
	} {
		if got := selectors(expr); !slices.Equal(got, want) {
			t.Errorf("selectors(%s) = %q, want %q", expr, got, want)
		}
	}
}
