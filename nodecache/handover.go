package nodecache

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The handover between the node cache and its standby runs over a unix
// socket the standby listens on. A node cache connects once its sockets are
// bound and holds the connection while it serves; the kernel closes it when
// the process dies, however it dies (SIGKILL, OOM kill, crash), so the
// standby learns at once that nothing serves the listen IPs and binds them
// itself. A node cache that stops on SIGTERM says "leaving" first and waits
// for the standby's "ok" (sent once the standby serves, or at once while
// another node cache serves) before it leaves the SO_REUSEPORT group: the
// listen IPs never go unserved. The name is abstract (no file): hostNetwork
// pods share the node's network namespace, and with it abstract names.
const (
	// DefaultHandoverSocket is the abstract unix socket name of the handover.
	DefaultHandoverSocket = "localdns-nodecache-handover"

	handoverLeaving = "leaving"
	handoverOK      = "ok"
	// handoverRetry paces a node cache's attempts to reach a standby that is
	// not listening (not deployed, or restarting).
	handoverRetry = time.Second
)

// abstractAddr is the address of an abstract unix socket.
func abstractAddr(name string) string { return "@" + name }

// standbyLink is a node cache's side: connected to the standby whenever one
// listens, reconnecting when it restarts.
type standbyLink struct {
	name   string
	logger *slog.Logger
	stop   context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	conn    net.Conn    // nil while no standby is reachable
	replies chan string // lines the standby sent on conn
}

// linkToStandby keeps a connection to the standby until handOver or ctx ends.
func linkToStandby(ctx context.Context, name string, logger *slog.Logger) *standbyLink {
	ctx, stop := context.WithCancel(ctx)
	l := &standbyLink{name: name, logger: logger, stop: stop, done: make(chan struct{})}
	go l.run(ctx)
	return l
}

func (l *standbyLink) run(ctx context.Context) {
	defer close(l.done)
	var d net.Dialer
	announced := false
	for ctx.Err() == nil {
		conn, err := d.DialContext(ctx, "unix", abstractAddr(l.name))
		if err != nil {
			if !announced {
				l.logger.Info("no standby to hand over to yet; retrying", "socket", l.name, "err", err)
				announced = true
			}
			select {
			case <-ctx.Done():
			case <-time.After(handoverRetry):
			}
			continue
		}
		announced = false
		l.logger.Info("linked to the standby", "socket", l.name)
		replies := make(chan string, 1)
		l.mu.Lock()
		l.conn, l.replies = conn, replies
		l.mu.Unlock()
		stopClose := context.AfterFunc(ctx, func() { conn.Close() })
		scanner := bufio.NewScanner(conn)
		for scanner.Scan() {
			select {
			case replies <- scanner.Text():
			default:
			}
		}
		stopClose()
		conn.Close()
		close(replies)
		l.mu.Lock()
		l.conn, l.replies = nil, nil
		l.mu.Unlock()
		if ctx.Err() == nil {
			l.logger.Warn("standby link lost; reconnecting", "socket", l.name)
		}
	}
}

// handOver tells the standby this node cache is leaving and waits, within
// ctx, until it serves; then it drops the link. Without a standby it returns
// at once, with an error saying so.
func (l *standbyLink) handOver(ctx context.Context) error {
	defer func() {
		l.stop()
		<-l.done
	}()
	l.mu.Lock()
	conn, replies := l.conn, l.replies
	l.mu.Unlock()
	if conn == nil {
		return errors.New("no standby linked")
	}
	if _, err := fmt.Fprintln(conn, handoverLeaving); err != nil {
		return fmt.Errorf("tell the standby: %w", err)
	}
	select {
	case reply, ok := <-replies:
		if !ok || reply != handoverOK {
			return fmt.Errorf("standby answered %q, want %q", reply, handoverOK)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for the standby: %w", ctx.Err())
	}
}

// primaries is the standby's side: the node caches linked to it, and
// whether the standby serves.
type primaries struct {
	ln     net.Listener
	logger *slog.Logger

	mu      sync.Mutex
	linked  int           // node caches linked that have not said leaving
	serving bool          // the standby's own engine is bound
	changed chan struct{} // closed and replaced at every change
}

func listenForPrimaries(name string, logger *slog.Logger) (*primaries, error) {
	ln, err := net.Listen("unix", abstractAddr(name))
	if err != nil {
		return nil, fmt.Errorf("handover socket %s: %w", name, err)
	}
	return &primaries{ln: ln, logger: logger, changed: make(chan struct{})}, nil
}

// state returns how many node caches are linked, and a channel closed at the
// next change.
func (p *primaries) state() (linked int, changed <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.linked, p.changed
}

// update applies f under the lock and wakes whoever waits for a change.
func (p *primaries) update(f func()) {
	p.mu.Lock()
	f()
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
}

// setServing records whether the standby's engine is bound.
func (p *primaries) setServing(serving bool) { p.update(func() { p.serving = serving }) }

// accept takes node caches' connections until the listener closes.
func (p *primaries) accept(ctx context.Context) {
	var handlers sync.WaitGroup
	defer handlers.Wait()
	for {
		conn, err := p.ln.Accept()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				p.logger.Error("handover socket accept failed", "err", err)
			}
			return
		}
		if err := samePeerUser(conn); err != nil {
			p.logger.Warn("handover connection refused", "err", err)
			conn.Close()
			continue
		}
		p.update(func() { p.linked++ })
		handlers.Go(func() { p.serveLink(ctx, conn) })
	}
}

// serveLink follows one node cache's link until it says leaving (then answers
// ok once the listen IPs are served without it) or the link closes.
func (p *primaries) serveLink(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	stopClose := context.AfterFunc(ctx, func() { conn.Close() })
	defer stopClose()
	left := false
	leave := func() {
		if !left {
			left = true
			p.update(func() { p.linked-- })
		}
	}
	defer leave()
	scanner := bufio.NewScanner(conn)
	for scanner.Scan() {
		if scanner.Text() != handoverLeaving {
			continue
		}
		leave()
		for {
			p.mu.Lock()
			ready, changed := p.serving || p.linked > 0, p.changed
			p.mu.Unlock()
			if ready {
				break
			}
			select {
			case <-changed:
			case <-ctx.Done():
				return
			}
		}
		_, _ = fmt.Fprintln(conn, handoverOK)
	}
}

func (p *primaries) close() error { return p.ln.Close() }

// samePeerUser refuses a peer that runs as another user than this process:
// only a node cache (root, like the standby) may make the standby stand down.
func samePeerUser(conn net.Conn) error {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return errors.New("not a unix connection")
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var credErr error
	if err := rc.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if credErr != nil {
		return fmt.Errorf("peer credentials: %w", credErr)
	}
	if int(cred.Uid) != os.Getuid() {
		return fmt.Errorf("peer pid %d runs as uid %d, not %d", cred.Pid, cred.Uid, os.Getuid())
	}
	return nil
}
