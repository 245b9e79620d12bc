// Package lb is pairlb's forwarding plane: one listener per virtual-service port (TCP, UDP or
// an HTTP redirector), real-server pools with schedulers, persistence, access control and sorry
// servers, and the copying of bytes between clients and real servers.
//
// It makes the per-connection decisions and leaves the rest to others: it does not probe servers
// (cmd/pairlb feeds it health changes), does not touch routing tables and does not parse files.
package lb
