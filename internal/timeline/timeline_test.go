package timeline

import (
	"bytes"
	"encoding/xml"
	"strconv"
	"strings"
	"testing"
	"time"
)

// drawing is the part of the SVG the tests read back.
type drawing struct {
	Polylines []struct {
		Stroke string `xml:"stroke,attr"`
		Points string `xml:"points,attr"`
	} `xml:"polyline"`
	Texts []string `xml:"text"`
}

func render(t *testing.T, c Chart) drawing {
	t.Helper()
	var buf bytes.Buffer
	if err := c.WriteSVG(&buf); err != nil {
		t.Fatal(err)
	}
	var d drawing
	if err := xml.Unmarshal(buf.Bytes(), &d); err != nil {
		t.Fatalf("not well-formed SVG: %v\n%s", err, buf.String())
	}
	return d
}

func points(t *testing.T, s string) [][2]float64 {
	var out [][2]float64
	for _, p := range strings.Fields(s) {
		x, y, _ := strings.Cut(p, ",")
		fx, err1 := strconv.ParseFloat(x, 64)
		fy, err2 := strconv.ParseFloat(y, 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("bad point %q", p)
		}
		out = append(out, [2]float64{fx, fy})
	}
	return out
}

func TestSeriesAreScaledIntoThePlot(t *testing.T) {
	d := render(t, Chart{Title: "drain <pod-0> & co", YLabel: "connections", Series: []Series{
		{Name: "pod-0", Points: []Point{{At: 0, Value: 6000}, {At: 10 * time.Second, Value: 0}}},
		{Name: "pod-1", Points: []Point{{At: 0, Value: 6000}, {At: 10 * time.Second, Value: 12000}}},
	}, Markers: []Marker{{At: 2 * time.Second, Label: "POST /drain"}}})
	if len(d.Polylines) != 2 || d.Polylines[0].Stroke == d.Polylines[1].Stroke {
		t.Fatalf("want two lines in two colours, got %+v", d.Polylines)
	}
	zero := points(t, d.Polylines[0].Points)[1]
	peak := points(t, d.Polylines[1].Points)[1]
	if zero[0] != left+plotW || peak[0] != left+plotW {
		t.Fatalf("the last sample should be at the right edge %g: %v %v", left+plotW, zero, peak)
	}
	if zero[1] != height-bottom {
		t.Fatalf("0 at y=%g, want the x axis at %g", zero[1], height-bottom)
	}
	// The axis ends on the round 15k above 12,000.
	if want := top + plotH*(1-12000.0/15000); peak[1] != float64(int(want*10))/10 {
		t.Fatalf("12,000 at y=%g, want %g on an axis up to 15k", peak[1], want)
	}
	all := strings.Join(d.Texts, "|")
	for _, want := range []string{"drain <pod-0> & co", "pod-0", "pod-1", "POST /drain", "connections", "10s", "15k"} {
		if !strings.Contains(all, want) {
			t.Fatalf("text %q missing from %q", want, all)
		}
	}
}

// A server that did not answer (killed, restarting) is a break in its
// line, not a fall to zero.
func TestGapsBreakTheLine(t *testing.T) {
	d := render(t, Chart{Series: []Series{{Name: "pod-0", Points: []Point{
		{At: 0, Value: 10}, {At: time.Second, Value: 12}, {At: 2 * time.Second, Gap: true},
		{At: 3 * time.Second, Value: 4}, {At: 4 * time.Second, Value: 5},
	}}}})
	if len(d.Polylines) != 2 {
		t.Fatalf("want the line broken in two, got %d lines", len(d.Polylines))
	}
	for _, pl := range d.Polylines {
		for _, p := range points(t, pl.Points) {
			if p[1] >= height-bottom {
				t.Fatalf("a point at zero (%v): the gap was drawn", p)
			}
		}
	}
}

func TestTicksAreRound(t *testing.T) {
	for top, want := range map[float64]string{18000: "0 5000 10k 15k 20k", 7: "0 2 4 6 8", 1200: "0 500 1000 1500"} {
		c := Chart{Series: []Series{{Points: []Point{{Value: top}}}}}
		_, axis := c.extent()
		var labels []string
		for _, v := range ticks(axis) {
			labels = append(labels, num(v))
		}
		if got := strings.Join(labels, " "); got != want {
			t.Fatalf("ticks up to %g: %s, want %s", top, got, want)
		}
	}
}

// Everything drawn lies inside the picture: axes, marks, labels, legend.
func TestEverythingIsInsideTheViewport(t *testing.T) {
	var buf bytes.Buffer
	c := Chart{Title: "t", YLabel: "y", Series: []Series{
		{Name: "a", Points: []Point{{At: 0, Value: 18000}, {At: time.Minute, Value: 0}}},
		{Name: "b", Points: []Point{{At: 0, Value: 0}, {At: time.Minute, Value: 18000}}},
	}, Markers: []Marker{{At: 20 * time.Second, Label: "drain"}}}
	if err := c.WriteSVG(&buf); err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(&buf)
	n := 0
	for {
		tok, err := dec.Token()
		if err != nil {
			break
		}
		el, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		for _, a := range el.Attr {
			limit := map[string]float64{"x": width, "x1": width, "x2": width, "y": height, "y1": height, "y2": height}[a.Name.Local]
			if limit == 0 {
				continue
			}
			v, err := strconv.ParseFloat(a.Value, 64)
			if err != nil || v < 0 || v > limit {
				t.Fatalf("<%s %s=%q> outside the %gx%g picture", el.Name.Local, a.Name.Local, a.Value, width, height)
			}
			n++
		}
	}
	if n < 20 {
		t.Fatalf("only %d coordinates checked", n)
	}
}
