// Package timeline draws how many connections each server held over a run
// as a self-contained SVG, so that a rollout, a drain, a storm or a
// rebalance can be seen in a README or a CI log without any service.
package timeline

import (
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

// Point is one sample of a series; a gap (the server did not answer)
// breaks the line rather than drawing a drop to zero.
type Point struct {
	At    time.Duration // since the start of the run
	Value float64
	Gap   bool
}

// Series is one server's samples, in time order.
type Series struct {
	Name   string
	Points []Point
}

// Marker is a labelled moment of the run (a storm, a switch of revision).
type Marker struct {
	At    time.Duration
	Label string
}

// Chart is what SVG draws.
type Chart struct {
	Title   string
	YLabel  string
	Series  []Series
	Markers []Marker
}

// Geometry of the drawing, in SVG user units.
const (
	width, height            = 800.0, 360.0
	left, right, top, bottom = 64.0, 150.0, 36.0, 40.0
	plotW, plotH             = width - left - right, height - top - bottom
)

// palette is distinguishable in print and for the common colour blindness.
var palette = []string{"#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000"}

// WriteSVG writes c as an SVG document.
func (c Chart) WriteSVG(w io.Writer) error {
	end, yMax := c.extent()
	xOf := func(at time.Duration) float64 { return left + plotW*at.Seconds()/end.Seconds() }
	yOf := func(v float64) float64 { return height - bottom - plotH*v/yMax }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%g" height="%g" viewBox="0 0 %g %g" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%g" y="22" font-size="14">%s</text>`+"\n", left, esc(c.Title))
	// Axes with ticks.
	for _, v := range ticks(yMax) {
		y := yOf(v)
		fmt.Fprintf(&b, `<line x1="%g" y1="%.1f" x2="%g" y2="%.1f" stroke="#ddd"/>`+"\n", left, y, left+plotW, y)
		fmt.Fprintf(&b, `<text x="%g" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y+4, num(v))
	}
	for _, s := range ticks(end.Seconds()) {
		x := xOf(time.Duration(s * float64(time.Second)))
		fmt.Fprintf(&b, `<text x="%.1f" y="%g" text-anchor="middle">%ss</text>`+"\n", x, height-bottom+16, num(s))
	}
	fmt.Fprintf(&b, `<path d="M%g %g V%g H%g" fill="none" stroke="black"/>`+"\n", left, top, height-bottom, left+plotW)
	fmt.Fprintf(&b, `<text transform="translate(14 %g) rotate(-90)" text-anchor="middle">%s</text>`+"\n", top+plotH/2, esc(c.YLabel))
	for _, m := range c.Markers {
		x := xOf(m.At)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%g" x2="%.1f" y2="%g" stroke="#888" stroke-dasharray="4 3"/>`+"\n", x, top, x, height-bottom)
		fmt.Fprintf(&b, `<text x="%.1f" y="%g" fill="#555">%s</text>`+"\n", x+3, top+12, esc(m.Label))
	}
	for i, s := range c.Series {
		color := palette[i%len(palette)]
		for _, line := range segments(s.Points) {
			pts := make([]string, len(line))
			for j, p := range line {
				pts[j] = fmt.Sprintf("%.1f,%.1f", xOf(p.At), yOf(p.Value))
			}
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`+"\n", color, strings.Join(pts, " "))
		}
		y := top + 16*float64(i)
		fmt.Fprintf(&b, `<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="%s" stroke-width="3"/>`+"\n", width-right+12, y, width-right+30, y, color)
		fmt.Fprintf(&b, `<text x="%g" y="%g">%s</text>`+"\n", width-right+36, y+4, esc(s.Name))
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// extent is the run's length and the y axis' top: the largest value
// rounded up to a tick, so that lines never touch the frame.
func (c Chart) extent() (end time.Duration, yMax float64) {
	end = time.Second
	for _, s := range c.Series {
		for _, p := range s.Points {
			end = max(end, p.At)
			if !p.Gap {
				yMax = max(yMax, p.Value)
			}
		}
	}
	for _, m := range c.Markers {
		end = max(end, m.At)
	}
	step := niceStep(max(yMax, 1))
	return end, step * math.Ceil(max(yMax, 1)*1.05/step)
}

// segments splits points at gaps.
func segments(points []Point) [][]Point {
	var out [][]Point
	var cur []Point
	for _, p := range points {
		if p.Gap {
			if len(cur) > 0 {
				out = append(out, cur)
			}
			cur = nil
			continue
		}
		cur = append(cur, p)
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// niceStep is a 1-2-5 step that cuts [0, top] into about five parts.
func niceStep(top float64) float64 {
	raw := top / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if raw <= m*mag {
			return m * mag
		}
	}
	return 10 * mag
}

func ticks(top float64) []float64 {
	step := niceStep(top)
	var out []float64
	for i := 0.0; i*step <= top*(1+1e-9); i++ {
		out = append(out, i*step)
	}
	return out
}

func num(v float64) string {
	if v >= 10000 && math.Mod(v, 1000) == 0 {
		return fmt.Sprintf("%gk", v/1000)
	}
	return fmt.Sprintf("%.6g", v) // 6 digits: no 0.6000000000000001
}

var esc = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;").Replace
