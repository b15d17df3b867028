package tlsglue

import (
	"maps"
	"slices"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// ZapLogger returns a zap logger that writes to l, for libraries that log with zap (certmagic
// and its ACME client). Their messages carry why an order, a challenge or a renewal failed,
// which the edge's own error only summarises; discarding them left ACME failures unexplained.
//
// Levels map one to one (debug, info, warn, error); DPanic, Panic and Fatal are written at
// zerolog's panic and fatal levels without zerolog acting on them (zap itself panics or exits
// after a Panic or Fatal call, as it always does). Fields keep their types where zerolog has
// the same one; the zap logger's name goes in "logger".
func ZapLogger(l zerolog.Logger) *zap.Logger {
	return zap.New(zerologCore{log: l})
}

// zerologCore is a zapcore.Core writing to a zerolog.Logger.
type zerologCore struct {
	log    zerolog.Logger
	fields []zapcore.Field // from With, written before each entry's own
}

func zerologLevel(l zapcore.Level) zerolog.Level {
	switch {
	case l <= zapcore.DebugLevel:
		return zerolog.DebugLevel
	case l == zapcore.InfoLevel:
		return zerolog.InfoLevel
	case l == zapcore.WarnLevel:
		return zerolog.WarnLevel
	case l == zapcore.ErrorLevel:
		return zerolog.ErrorLevel
	case l == zapcore.FatalLevel:
		return zerolog.FatalLevel
	default: // DPanic, Panic
		return zerolog.PanicLevel
	}
}

func (c zerologCore) Enabled(l zapcore.Level) bool {
	zl := zerologLevel(l)
	return zl >= c.log.GetLevel() && zl >= zerolog.GlobalLevel()
}

func (c zerologCore) With(fields []zapcore.Field) zapcore.Core {
	return zerologCore{log: c.log, fields: append(append([]zapcore.Field{}, c.fields...), fields...)}
}

func (c zerologCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c zerologCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	// WithLevel, not Fatal or Panic: those would exit or panic inside zerolog, before zap does.
	ev := c.log.WithLevel(zerologLevel(e.Level))
	if e.LoggerName != "" {
		ev = ev.Str("logger", e.LoggerName)
	}
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fields {
		f.AddTo(enc)
	}
	for _, k := range slices.Sorted(maps.Keys(enc.Fields)) { // a stable order of fields
		switch v := enc.Fields[k].(type) {
		case string:
			ev = ev.Str(k, v)
		case bool:
			ev = ev.Bool(k, v)
		case int64:
			ev = ev.Int64(k, v)
		case int:
			ev = ev.Int(k, v)
		case uint64:
			ev = ev.Uint64(k, v)
		case float64:
			ev = ev.Float64(k, v)
		case time.Time:
			ev = ev.Time(k, v)
		case time.Duration:
			ev = ev.Dur(k, v)
		default: // arrays, objects, reflected values
			ev = ev.Interface(k, v)
		}
	}
	if e.Stack != "" {
		ev = ev.Str("stack", e.Stack)
	}
	ev.Msg(e.Message)
	return nil
}

func (zerologCore) Sync() error { return nil }
