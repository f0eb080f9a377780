package server

import (
	"context"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"google.golang.org/grpc/peer"

	"github.com/castellan-mesh/castellan/internal/opshttp"
)

// bundleRefreshHint is advertised in the SPIFFE bundle document.
const bundleRefreshHint = 5 * time.Minute

func (s *Server) httpHandler() http.Handler {
	mux := opshttp.NewMux(opshttp.Config{Gatherer: s.cfg.Gatherer, Ready: s.Ready})
	mux.HandleFunc("GET /bundle", s.serveBundlePEM)
	mux.HandleFunc("GET /bundle.spiffe", s.serveBundleSPIFFE)
	return mux
}

// Ready reports whether the CA can sign now, and why not.
func (s *Server) Ready() (bool, string) {
	a := s.src.Authority()
	switch {
	case a == nil:
		return false, "no signing material loaded"
	case time.Now().After(a.NotAfter()):
		return false, "the signing chain has expired"
	}
	// A CA that node agents rely on is not ready before it knows the
	// pods: until then it would refuse every agent as Unavailable.
	if r, ok := s.cfg.Impersonation.(Readier); ok {
		if ok, why := r.Ready(); !ok {
			return false, why
		}
	}
	// The material source may be ready and still name a problem (an
	// upstream renewal failing while the current chain signs).
	if r, ok := s.src.(Readier); ok {
		return r.Ready()
	}
	return true, "ok"
}

func (s *Server) serveBundlePEM(w http.ResponseWriter, _ *http.Request) {
	a := s.src.Authority()
	if a == nil {
		http.Error(w, "no trust bundle loaded", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	_, _ = w.Write(a.BundlePEM())
}

func (s *Server) serveBundleSPIFFE(w http.ResponseWriter, _ *http.Request) {
	a := s.src.Authority()
	if a == nil {
		http.Error(w, "no trust bundle loaded", http.StatusServiceUnavailable)
		return
	}
	b := spiffebundle.New(s.td)
	b.SetX509Authorities(a.Roots)
	if s.cfg.JWT != nil {
		b.SetJWTAuthorities(s.cfg.JWT.JWTAuthorities())
	}
	b.SetRefreshHint(bundleRefreshHint)
	doc, err := b.Marshal()
	if err != nil {
		http.Error(w, "could not encode bundle", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(doc)
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}
