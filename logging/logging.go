// Package logging carries a structured logger in the context (containerd's log.G pattern) and
// sets up the runc-compatible --log/--log-format outputs. Clients such as containerd's runc
// shim read the last JSON line's "msg" from --log when a command fails, so JSON records use
// runc's keys: level, msg, time.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
)

type key struct{}

// G returns the context's logger, or the default one.
func G(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(key{}).(*slog.Logger); ok {
		return l
	}
	return slog.Default()
}

// With returns a context whose logger carries the extra attributes (pod, container, process).
func With(ctx context.Context, args ...any) context.Context {
	return context.WithValue(ctx, key{}, G(ctx).With(args...))
}

// WithLogger returns a context carrying l.
func WithLogger(ctx context.Context, l *slog.Logger) context.Context {
	return context.WithValue(ctx, key{}, l)
}

// Options configure Setup.
type Options struct {
	Path   string // log file; empty: stderr
	Format string // "text" (default) or "json"
	Debug  bool
	// Info lowers the level from warnings to informational messages (daemons).
	Info bool
}

// Setup installs the default logger and returns a closer for the log file.
func Setup(o Options) (io.Closer, error) {
	var w io.Writer = os.Stderr
	var closer io.Closer = io.NopCloser(nil)
	if o.Path != "" {
		f, err := os.OpenFile(o.Path, os.O_CREATE|os.O_WRONLY|os.O_APPEND|os.O_SYNC, 0o644)
		if err != nil {
			return nil, fmt.Errorf("open log file %s: %w", o.Path, err)
		}
		w, closer = f, f
	}
	level := slog.LevelWarn
	if o.Info {
		level = slog.LevelInfo
	}
	if o.Debug {
		level = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: runcKeys}
	var h slog.Handler
	switch o.Format {
	case "", "text":
		h = slog.NewTextHandler(w, opts)
	case "json":
		h = slog.NewJSONHandler(w, opts)
	default:
		return nil, fmt.Errorf("invalid --log-format %q: use text or json", o.Format)
	}
	slog.SetDefault(slog.New(h))
	return closer, nil
}

// runcKeys renames slog's keys to runc's (logrus) ones and lower-cases levels.
func runcKeys(_ []string, a slog.Attr) slog.Attr {
	switch a.Key {
	case slog.LevelKey:
		if l, ok := a.Value.Any().(slog.Level); ok {
			name := map[slog.Level]string{slog.LevelDebug: "debug", slog.LevelInfo: "info", slog.LevelWarn: "warning", slog.LevelError: "error"}[l]
			if name == "" {
				name = l.String()
			}
			return slog.String("level", name)
		}
	case slog.MessageKey:
		return slog.String("msg", a.Value.String())
	}
	return a
}
