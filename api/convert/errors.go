package convert

import "fmt"

// KindError attaches an agentproto error kind to an error, so that the agent's ERROR frame
// tells the host which class of failure it was without the host parsing messages.
type KindError struct {
	Kind string
	Err  error
}

func (e *KindError) Error() string { return e.Err.Error() }
func (e *KindError) Unwrap() error { return e.Err }

// WithKind classifies err (nil stays nil).
func WithKind(kind string, err error) error {
	if err == nil {
		return nil
	}
	return &KindError{Kind: kind, Err: err}
}

// Errorf builds a classified error; %w works as in fmt.Errorf.
func Errorf(kind, format string, args ...any) error {
	return &KindError{Kind: kind, Err: fmt.Errorf(format, args...)}
}
