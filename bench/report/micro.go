package report

import (
	"bufio"
	"strconv"
	"strings"
)

// Micro is one Go microbenchmark over its -count runs.
type Micro struct {
	Name     string    `json:"name"`
	NsPerOp  []float64 `json:"ns_per_op"`
	BPerOp   []float64 `json:"bytes_per_op"`
	AllocsOp []float64 `json:"allocs_per_op"`
}

// ParseMicro reads `go test -bench -benchmem` output. Benchmarks keep the
// order of their first appearance; the -GOMAXPROCS suffix is dropped.
func ParseMicro(out string) []Micro {
	var list []Micro
	idx := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		name := f[0]
		if i := strings.LastIndex(name, "-"); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		i, ok := idx[name]
		if !ok {
			list = append(list, Micro{Name: name})
			i = len(list) - 1
			idx[name] = i
		}
		m := &list[i]
		for j := 2; j+1 < len(f); j += 2 {
			v, err := strconv.ParseFloat(f[j], 64)
			if err != nil {
				continue
			}
			switch f[j+1] {
			case "ns/op":
				m.NsPerOp = append(m.NsPerOp, v)
			case "B/op":
				m.BPerOp = append(m.BPerOp, v)
			case "allocs/op":
				m.AllocsOp = append(m.AllocsOp, v)
			}
		}
	}
	return list
}
