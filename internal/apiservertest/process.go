package apiservertest

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
)

// process is one supervised child process (etcd or kube-apiserver).
type process struct {
	name      string
	logPath   string
	logOffset int64 // size of the log before this run; logContains looks after it
	cmd       *exec.Cmd
	done      chan struct{} // closed once the process has exited and been reaped
	waitErr   error         // the result of cmd.Wait; read only after done is closed
}

// startProcess starts bin with args, appending its stdout and stderr to
// logPath. The process runs in its own process group, so stop can signal it
// and anything it spawned, and a terminal's Ctrl-C reaches only the test
// process. With netns non-empty it runs in that network namespace: the
// forking thread enters it (and, being locked and never released, dies
// with it), so the test process's other threads stay where they are.
//
// The child gets SIGKILL from the kernel if the test process dies (panic,
// timeout, SIGINT, SIGKILL): PR_SET_PDEATHSIG fires when the *thread* that
// forked the child exits, so the forking goroutine locks its OS thread and
// keeps it until the child has exited. Without that lock the Go runtime could
// retire the thread and kill a healthy child.
func startProcess(name, bin string, args []string, logPath, netns string) (*process, error) {
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open %s log: %w", name, err)
	}
	var offset int64
	if st, err := logFile.Stat(); err == nil {
		offset = st.Size()
	}
	fmt.Fprintf(logFile, "=== %s: starting %s %q\n", time.Now().Format(time.RFC3339Nano), bin, args)

	cmd := exec.Command(bin, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}

	p := &process{name: name, logPath: logPath, logOffset: offset, cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// Deliberately never unlocked: the thread ends with this goroutine,
		// after the child has been reaped.
		runtime.LockOSThread()
		defer logFile.Close()
		if netns != "" {
			if err := enterNetNS(netns); err != nil {
				started <- err
				return
			}
		}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return p, nil
}

// exited reports whether the process has exited.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group and waits up to grace for the
// process to exit, then sends SIGKILL and waits for it. It is a no-op for a
// process that has already exited. It reports whether SIGKILL was needed.
func (p *process) stop(grace time.Duration) (killed bool) {
	if p.exited() {
		return false
	}
	pgid := p.cmd.Process.Pid
	// ESRCH only means the group is already gone; done will be closed.
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.done:
		return false
	case <-timer.C:
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
		return true
	}
}

// exitError describes how the process ended, for error messages. Call only
// after done is closed.
func (p *process) exitError() error {
	if p.waitErr == nil {
		return fmt.Errorf("%s exited with status 0", p.name)
	}
	return fmt.Errorf("%s exited: %w", p.name, p.waitErr)
}

// logContains reports whether the part of the log written since this process
// started contains s. A log that cannot be read contains nothing.
func (p *process) logContains(s string) bool {
	b, err := os.ReadFile(p.logPath)
	if err != nil || int64(len(b)) < p.logOffset {
		return false
	}
	return bytes.Contains(b[p.logOffset:], []byte(s))
}

// logTail returns the last n lines of the file at path (reading at most its
// last 256 KiB), or a note saying why it could not be read.
func logTail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	defer f.Close()
	const maxRead = 256 << 10
	if st, err := f.Stat(); err == nil && st.Size() > maxRead {
		if _, err := f.Seek(-maxRead, io.SeekEnd); err != nil {
			return fmt.Sprintf("(cannot seek in log: %v)", err)
		}
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	b = bytes.TrimRight(b, "\n")
	lines := bytes.Split(b, []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// enterNetNS switches the calling (locked) thread into the named network
// namespace for good.
func enterNetNS(name string) error {
	h, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", name, err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		return fmt.Errorf("enter network namespace %s: %w", name, err)
	}
	return nil
}
