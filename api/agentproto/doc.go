// Package agentproto is the wire contract between the host runtime and the guest agent:
// frame formats, size caps, message types and JSON payloads. Both ends import it, so a change
// here is a protocol change and must bump Version.
//
// Two virtio-serial ports carry the protocol (see docs/protocol.md for the full description):
//
//	sh.hyper.channel.0  control: | type u32 BE | length u32 BE (header included) | JSON |
//	sh.hyper.channel.1  stream:  | seq u64 BE  | length u32 BE (payload only)     | bytes |
//
// The guest is untrusted: every reader in this package enforces a hard size cap before it
// allocates, and returns ErrProtocol (checked with errors.Is) for anything malformed.
package agentproto
