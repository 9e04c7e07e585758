package agentproto

// PortForward is MsgPortForward's payload: connect to 127.0.0.1:Port inside the guest
// ([::1]:Port when that is refused) and carry the connection's bytes on stream Stream,
// both ways (host→guest: what the client sends; guest→host: what the server answers;
// EOF = that direction's half close). The
// host allocates Stream (NextSeq) and opens it before sending the command; the guest
// opens its side before its ACK, and sends nothing before it. An ERROR means the guest did
// not connect (nothing listens there: connection refused) and never opened the stream.
type PortForward struct {
	Port   uint16 `json:"port"`
	Stream uint64 `json:"stream"`
}

// ForwardRef is MsgCloseForward's payload: abort the forward carried on Stream. The guest
// closes its connection and ends both directions of the stream (its EOF follows); a
// forward that already ended is not an error.
type ForwardRef struct {
	Stream uint64 `json:"stream"`
}

// MaxPortForwards bounds the forwards open at once in one pod, on each side: the host
// closes connections beyond it, the agent refuses them.
const MaxPortForwards = 64
