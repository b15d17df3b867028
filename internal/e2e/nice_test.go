package e2e

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"testing"
)

// threads lists the thread ids of process pid.
func threads(pid int) ([]int, error) {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil, fmt.Errorf("threads of %d: %w", pid, err)
	}
	var tids []int
	for _, e := range entries {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}

// renice sets the scheduling niceness of every thread of process pid. Linux keeps niceness
// per thread and a new thread inherits its creator's, so once every existing thread is
// reniced, threads the Go runtime starts later are too; the thread list is walked until a
// pass finds nothing new, to catch one created during the walk.
func renice(pid, niceness int) error {
	done := map[int]bool{}
	for {
		tids, err := threads(pid)
		if err != nil {
			return err
		}
		fresh := 0
		for _, tid := range tids {
			if done[tid] {
				continue
			}
			// A thread that exited since the listing is not an error.
			if err := syscall.Setpriority(syscall.PRIO_PROCESS, tid, niceness); err != nil && err != syscall.ESRCH {
				return fmt.Errorf("renice thread %d of %d to %d: %w", tid, pid, niceness, err)
			}
			done[tid] = true
			fresh++
		}
		if fresh == 0 {
			return nil
		}
	}
}

// foreground is the niceness raisePriority gives a process.
const foreground = -10

// raisePriority runs process pid ahead of the machine's other processes (niceness
// foreground), for a test that measures its latency while other processes, standing in for
// other machines, load the CPUs. Raising needs root (CAP_SYS_NICE); without it the test
// goes on at the normal priority and raisePriority says so and returns false.
func raisePriority(t *testing.T, pid int) bool {
	t.Helper()
	if err := renice(pid, foreground); err != nil {
		if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
			t.Logf("cannot raise process %d's priority (%v): its latency shares the CPUs with every other process", pid, err)
			return false
		}
		t.Fatal(err)
	}
	return true
}

// checkNiceness fails t unless every thread of process pid runs at niceness want: it shows
// that threads started after renice inherited it.
func checkNiceness(t *testing.T, name string, pid, want int) {
	t.Helper()
	tids, err := threads(pid)
	if err != nil {
		t.Errorf("%s: %v", name, err)
		return
	}
	for _, tid := range tids {
		// The raw system call answers 20 − niceness (Go's syscall passes it on as is).
		prio, err := syscall.Getpriority(syscall.PRIO_PROCESS, tid)
		if err != nil {
			continue // the thread exited since the listing
		}
		if got := 20 - prio; got != want {
			t.Errorf("%s thread %d runs at niceness %d, want %d (of %d threads)", name, tid, got, want, len(tids))
		}
	}
}
