package nettest

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// InNetns runs fn on a thread in the network namespace at nsPath, so that the sockets it
// creates belong to that namespace (they keep it wherever they are used later). The thread
// goes back to the caller's namespace before it is unlocked: a thread that died instead
// could be the one that started a client under test (containerd), whose Pdeathsig would
// stop it.
func InNetns(nsPath string, fn func()) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		ns, err := netns.GetFromPath(nsPath)
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter network namespace %s: %w", nsPath, err)
			return
		}
		defer func() {
			if err := netns.Set(orig); err != nil {
				panic(fmt.Sprintf("cannot return to the test's network namespace: %v", err))
			}
		}()
		fn()
		errc <- nil
	}()
	return <-errc
}
