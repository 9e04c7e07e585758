package main

// cleanups is the one cleanup stack of a command made of steps (create, exec): each step
// registers how to undo what it made, and run undoes it all, latest first, if the command
// fails.
type cleanups struct{ steps []cleanupStep }

type cleanupStep struct {
	undo func()
	// always: run on success too (a lock to release, not a thing to undo).
	always bool
}

// onFailure registers f, to run if the command fails.
func (c *cleanups) onFailure(f func()) { c.steps = append(c.steps, cleanupStep{undo: f}) }

// always registers f, to run when the command ends, in its place in the stack.
func (c *cleanups) always(f func()) { c.steps = append(c.steps, cleanupStep{undo: f, always: true}) }

// run runs the registered steps, latest first: all of them if *err is set, else the
// always ones. Call it deferred, with the command's named error.
func (c *cleanups) run(err *error) {
	for i := len(c.steps) - 1; i >= 0; i-- {
		if s := c.steps[i]; s.always || *err != nil {
			s.undo()
		}
	}
}
