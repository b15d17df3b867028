package e2e

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// renice sets the scheduling niceness of every thread of process pid. Linux keeps niceness
// per thread and a new thread inherits its creator's, so once every existing thread is
// reniced, threads the Go runtime starts later are too; the thread list is walked until a
// pass finds nothing new, to catch one created during the walk.
func renice(t *testing.T, pid, niceness int) error {
	t.Helper()
	done := map[int]bool{}
	for {
		entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			return fmt.Errorf("renice %d: %w", pid, err)
		}
		fresh := 0
		for _, e := range entries {
			tid, err := strconv.Atoi(e.Name())
			if err != nil || done[tid] {
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
	if err := renice(t, pid, foreground); err != nil {
		if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
			t.Logf("cannot raise process %d's priority (%v): its latency shares the CPUs with every other process", pid, err)
			return false
		}
		t.Fatal(err)
	}
	return true
}

// checkNiceness fails t unless every thread of process pid runs at niceness: it shows that
// threads started after renice inherited it.
func checkNiceness(t *testing.T, name string, pid, want int) {
	t.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Errorf("threads of %s: %v", name, err)
		return
	}
	for _, e := range entries {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if got, ok := threadNiceness(pid, tid); ok && got != want {
			t.Errorf("%s thread %d runs at niceness %d, want %d (of %d threads)", name, tid, got, want, len(entries))
		}
	}
}

// threadNiceness reads thread tid's niceness from /proc (field 19 of stat); false if the
// thread is gone.
func threadNiceness(pid, tid int) (int, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/stat", pid, tid))
	if err != nil {
		return 0, false
	}
	// The command name (field 2) is in parentheses and may hold spaces: count after it.
	s := string(b)
	i := len(s) - 1
	for i >= 0 && s[i] != ')' {
		i--
	}
	// fields[0] is field 3 (state); niceness is field 19.
	fields := strings.Fields(s[i+1:])
	if len(fields) <= 19-3 {
		return 0, false
	}
	n, err := strconv.Atoi(fields[19-3])
	return n, err == nil
}
