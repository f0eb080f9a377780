package attest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// AuthType is the AuthType of the AuthInfo that Credentials returns.
const AuthType = "castellan-peercred"

// PeerCred is what the kernel says about the process at the other end of a
// Unix socket, taken when the connection is accepted (SO_PEERCRED: the
// process that called connect), and that process's start time, read at the
// same moment.
type PeerCred struct {
	// PID, UID and GID are the peer's, as seen from the agent's pid and
	// user namespaces.
	PID int32
	UID uint32
	GID uint32
	// StartTime is field 22 of /proc/<pid>/stat: clock ticks after boot.
	// A later process given the same pid has another start time.
	StartTime uint64
}

// AuthInfo is the gRPC AuthInfo of a connection accepted by Credentials.
type AuthInfo struct {
	credentials.CommonAuthInfo
	// Peer is the process that opened the connection.
	Peer PeerCred
}

// AuthType returns AuthType.
func (AuthInfo) AuthType() string { return AuthType }

// PeerFromContext returns the peer credentials of the connection a gRPC
// server call came in on, and false if it was not accepted through
// Credentials.
func PeerFromContext(ctx context.Context) (PeerCred, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok || p == nil {
		return PeerCred{}, false
	}
	switch ai := p.AuthInfo.(type) {
	case AuthInfo:
		return ai.Peer, true
	case *AuthInfo:
		if ai != nil {
			return ai.Peer, true
		}
	}
	return PeerCred{}, false
}

// CredentialsOption configures Credentials.
type CredentialsOption interface {
	apply(*credsConfig)
}

type credsConfig struct {
	procRoot string
	attestor *Attestor
}

type credsOptionFunc func(*credsConfig)

func (f credsOptionFunc) apply(c *credsConfig) { f(c) }

// WithProcRoot reads the peer's start time under root instead of "/proc".
// It must be the /proc of the pid namespace the agent sees its peers in.
func WithProcRoot(root string) CredentialsOption {
	return credsOptionFunc(func(c *credsConfig) { c.procRoot = root })
}

// WithAttestor counts and logs the connections refused at the handshake
// with a's metrics and logger, as refusals of Attest are: reason
// no_peer_credentials, pid_reused (the peer exited at once) or
// proc_unreadable. It also reads the peer's start time under a's ProcRoot,
// unless WithProcRoot says otherwise.
func WithAttestor(a *Attestor) CredentialsOption {
	return credsOptionFunc(func(c *credsConfig) { c.attestor = a })
}

// Credentials returns gRPC server transport credentials for a Unix socket
// listener. Their handshake reads the peer's credentials from the kernel
// and its start time from /proc, and gives them to the server's calls as
// an AuthInfo (see PeerFromContext). A connection whose credentials cannot
// be read (not a Unix socket, a peer outside the agent's pid namespace,
// a peer that already exited) is closed at the handshake. They do not
// encrypt: a Unix socket does not leave the host.
//
// Where the kernel offers it (Linux 6.5 and later, SO_PEERPIDFD), the
// handshake also checks that the pid still names the process that
// connected after its start time was read, closing the window in which
// the peer could exit and its pid be given to another process.
func Credentials(opts ...CredentialsOption) credentials.TransportCredentials {
	var c credsConfig
	for _, o := range opts {
		o.apply(&c)
	}
	if c.procRoot == "" && c.attestor != nil {
		c.procRoot = c.attestor.procRoot
	}
	if c.procRoot == "" {
		c.procRoot = DefaultProcRoot
	}
	return &peerCreds{cfg: c}
}

type peerCreds struct {
	cfg credsConfig
}

func (c *peerCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("attest: peer credentials are for the server side only")
}

func (c *peerCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	p, err := ReadPeerCred(conn, c.cfg.procRoot)
	if err != nil {
		if a := c.cfg.attestor; a != nil {
			err = a.refused(context.Background(), p, err)
		}
		return nil, nil, err
	}
	return conn, AuthInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		Peer:           p,
	}, nil
}

func (c *peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: AuthType}
}

func (c *peerCreds) Clone() credentials.TransportCredentials {
	return &peerCreds{cfg: c.cfg}
}

// OverrideServerName is deprecated in gRPC and unused on the server.
func (c *peerCreds) OverrideServerName(string) error { return nil }

// ReadPeerCred returns the credentials of the process at the other end of
// conn, a Unix socket connection, with its start time read under procRoot.
// Its errors are *Error: no_peer_credentials when the kernel gives none,
// pid_reused when the peer has already exited, proc_unreadable when its
// start time cannot be read.
func ReadPeerCred(conn net.Conn, procRoot string) (PeerCred, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return PeerCred{}, refuse(ReasonNoPeerCredentials, 0, nil, "%T is not a Unix socket connection", conn)
	}
	if a := conn.LocalAddr(); a == nil || a.Network() != "unix" {
		return PeerCred{}, refuse(ReasonNoPeerCredentials, 0, nil, "the connection is not over a Unix socket")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return PeerCred{}, refuse(ReasonNoPeerCredentials, 0, err, "could not read the peer's credentials")
	}
	var (
		cred   *unix.Ucred
		pidfd  = -1
		errOpt error
	)
	err = raw.Control(func(fd uintptr) {
		cred, errOpt = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if errOpt != nil {
			return
		}
		var errFD error
		pidfd, errFD = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD)
		if errFD != nil {
			pidfd = -1
			if !errors.Is(errFD, unix.ENOPROTOOPT) {
				errOpt = fmt.Errorf("SO_PEERPIDFD: %w", errFD)
			}
		}
	})
	if err == nil {
		err = errOpt
	}
	if pidfd >= 0 {
		defer unix.Close(pidfd)
	}
	switch {
	case errors.Is(err, unix.ESRCH) && cred != nil:
		return PeerCred{}, refuse(ReasonPIDReused, cred.Pid, nil, "process %d exited as it connected", cred.Pid)
	case err != nil:
		return PeerCred{}, refuse(ReasonNoPeerCredentials, 0, err, "could not read the peer's credentials")
	case cred.Pid <= 0:
		return PeerCred{}, refuse(ReasonNoPeerCredentials, 0, nil, "the peer's pid is not visible: it runs in another pid namespace than the agent (run the agent with hostPID)")
	}
	p := PeerCred{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}
	st, err := StartTime(procRoot, p.PID)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return PeerCred{}, refuse(ReasonPIDReused, p.PID, nil, "process %d exited as it connected", p.PID)
	case err != nil:
		return PeerCred{}, refuse(ReasonProcUnreadable, p.PID, err, "could not read the start time of process %d", p.PID)
	}
	p.StartTime = st
	if pidfd >= 0 {
		// Signal 0 checks only that the process lives (a zombie included,
		// whose pid cannot be reused): the start time read is its own.
		// EPERM also means it lives.
		if err := unix.PidfdSendSignal(pidfd, 0, nil, 0); err != nil && !errors.Is(err, unix.EPERM) {
			return PeerCred{}, refuse(ReasonPIDReused, p.PID, err, "process %d exited while its credentials were read", p.PID)
		}
	}
	return p, nil
}
