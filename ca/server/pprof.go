package server

import (
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/castellan-mesh/castellan/internal/opshttp"
)

// listenPprof binds Config.PprofAddr, which must be a loopback address:
// profiles and traces are served without authentication, so they are
// reachable only from the CA's own host or pod (kubectl port-forward).
func (s *Server) listenPprof() error {
	addr := s.cfg.PprofAddr
	if addr == "" {
		return nil
	}
	if err := checkLoopback(addr); err != nil {
		return fmt.Errorf("server: pprof address %q: %w", addr, err)
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("server: pprof listener: %w", err)
	}
	mux := http.NewServeMux()
	opshttp.HandlePprof(mux)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	s.pprofLis = lis
	s.pprof = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return nil
}

// PprofAddr returns the bound pprof address, or "" when pprof is off.
func (s *Server) PprofAddr() string {
	if s.pprofLis == nil {
		return ""
	}
	return s.pprofLis.Addr().String()
}

// checkLoopback accepts host:port whose host is a loopback IP or
// "localhost"; an empty host (all interfaces) is refused.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("pprof is served only on a loopback address (such as 127.0.0.1:15016), not on %q", host)
}
