package jwtsvid

import "context"

// ReloadForTest reloads s's state now.
func ReloadForTest(s *KeySet, ctx context.Context) (bool, error) { return s.reload(ctx) }
