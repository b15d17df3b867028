package tlsglue

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/zap"
)

func logLines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not JSON: %q: %v", l, err)
		}
		lines = append(lines, m)
	}
	return lines
}

// TestZapLogger: zap entries come out as zerolog lines with the level mapped, the message, the
// logger's name, the fields of With and of the call, typed; levels below the zerolog logger's are
// dropped; Fatal- and Panic-level entries are written without zerolog exiting or panicking.
func TestZapLogger(t *testing.T) {
	var buf bytes.Buffer
	zl := ZapLogger(zerolog.New(&buf).Level(zerolog.InfoLevel)).Named("acme").With(zap.String("issuer", "pebble"))
	zl.Debug("dropped")
	zl.Info("obtaining", zap.Strings("names", []string{"a.test", "b.test"}), zap.Int("attempt", 2), zap.Bool("forced", true))
	zl.Warn("retrying", zap.Duration("retry_in", 1500*time.Millisecond))
	zl.Error("order failed", zap.Error(errors.New("no certificate chains")), zap.Float64("ratio", 0.5))
	zl.DPanic("odd") // panics only in development loggers
	lines := logLines(t, &buf)
	if len(lines) != 4 {
		t.Fatalf("%d lines, want 4 (debug dropped):\n%s", len(lines), buf.String())
	}
	want := []map[string]any{
		{"level": "info", "message": "obtaining", "logger": "acme", "issuer": "pebble", "names": []any{"a.test", "b.test"}, "attempt": 2.0, "forced": true},
		{"level": "warn", "message": "retrying", "logger": "acme", "issuer": "pebble", "retry_in": 1500.0},
		{"level": "error", "message": "order failed", "logger": "acme", "issuer": "pebble", "error": "no certificate chains", "ratio": 0.5},
		{"level": "panic", "message": "odd", "logger": "acme"},
	}
	for i, w := range want {
		for k, v := range w {
			got, _ := json.Marshal(lines[i][k])
			exp, _ := json.Marshal(v)
			if !bytes.Equal(got, exp) {
				t.Errorf("line %d: %s = %s, want %s (line %v)", i, k, got, exp, lines[i])
			}
		}
	}
	if ZapLogger(zerolog.Nop()).Core().Enabled(zap.ErrorLevel) {
		t.Error("a disabled zerolog logger enables zap entries")
	}
}

// TestACMELogsReachZerolog runs certmagic against a directory URL that answers 503: its own
// account of the failure (acmez's request log) must reach the edge's log.
func TestACMELogsReachZerolog(t *testing.T) {
	dir := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
	}))
	defer dir.Close()
	var buf lockedBuffer
	leaf := makeCert(t, "leaf.test", nil, false)
	a, err := NewACME(ACMEOptions{CA: dir.URL + "/directory", Names: []string{"leaf.test"}, StorageDir: t.TempDir(),
		HTTPPort: 1, Logger: zerolog.New(&buf).Level(zerolog.DebugLevel)}, leaf.key)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := a.Obtain(ctx); err == nil {
		t.Fatal("Obtain succeeded against a failing directory")
	}
	if !strings.Contains(buf.String(), `"status_code":503`) {
		t.Errorf("no certmagic log line reached zerolog:\n%s", buf.String())
	}
	t.Logf("certmagic said:\n%s", buf.String())
}

// lockedBuffer is a bytes.Buffer safe for the goroutines certmagic logs from.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
