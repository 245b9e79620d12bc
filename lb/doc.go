// Package lb is pairlb's forwarding plane: one listener per virtual-service port (TCP, UDP or
// an HTTP redirector), real-server pools with schedulers, persistence, access control and sorry
// servers, and the copying of bytes between clients and real servers.
//
// It makes the per-connection decisions and leaves the rest to others: it does not probe servers
// (the daemon package feeds it health changes), does not touch routing tables and does not parse files.
//
// # Where things are
//
// Each type sits in one file with all its methods. The Balancer's are in balancer.go and
// apply.go, but for the status (status.go), the loop guard (loopguard.go) and the health
// evidence (server.go), each beside what it is about.
//
//	balancer.go    Balancer: New, Run, shutdown, housekeeping, the run-time setters
//	apply.go       Apply: listener keys and bindings, opening, adopting and switching listeners
//	loop.go        loop: the event loops, their tasks and ticks
//	tcplisten.go   tcpListener: a listening socket every loop watches; admitting a connection
//	tcpconn.go     tcpConn: one proxied connection, dialling and relaying
//	tcptimers.go   connTimers: a loop's connections by dial and idle deadline
//	udplisten.go   udpListener: a VIP's datagram socket and its session table
//	udpsession.go  udpSession: one UDP client and its socket towards a server
//	redirect.go    redirectListener (the port-80 redirector) and the unavailable_redirect answer
//	dial.go        dialPlan: a new client's destinations in turn
//	service.go     service: one virtual service's run-time form; scheduling and access
//	server.go      realServer: one pool member; health evidence
//	stats.go       the drop reasons and a service's counters
//	connlog.go     the connection log: the end reasons, the loops' queue, the writer
//	sockets.go     opening sockets: bindVIP, listening, dialling, socket options
//	sys.go         the loops' raw system calls and socket addresses
//	mmsg.go        msgBatch: recvmmsg and sendmmsg batches
//	relay.go       the buffers and pipes connections borrow
//	persist.go     persistTable: source-IP persistence
//	loopguard.go   refusing a connection that comes back from the balancer itself
//	budgetconn.go  budgetConn: the read budget of a connection that carries one request
//	scheduler.go, lograte.go, metrics.go, status.go
//
// # Kernel resources and the lifecycle
//
// New opens nothing. The first Apply makes the loops (an epoll set and an eventfd each) and
// every Apply opens the sockets of the listeners it adds; Run runs the loops and, when its
// context ends, closes everything, also when the context ended before Run was called. A first
// Apply that fails before Run closes the loops it made along with its sockets. So a Balancer
// that is made and never applied needs nothing released, and one that has been applied is
// released by Run. The two other shapes were rejected: making the loops in Run would make Run
// fail after the listeners are open, and Apply posts work to the loops before Run (each
// listener's watch; the daemon starts Run only after the first round of health checks, and the
// clients that arrive meanwhile wait in the kernel's queues for it); a Close beside Run would be
// a second way to end a balancer, for every caller to remember on every error path between New
// and Run. Run cannot fail, so it returns nothing.
//
// A descriptor the package holds raw is closed with sysClose (resetFD, to close with an RST,
// closes through it); one handed to an os.File or to net (a loop's epoll set, a redirector's
// socket, a client given to unavailable_redirect) is closed by its owner. A connection or
// datagram not forwarded is counted with serviceStats.drop under one DropReason.
//
// # Listener states
//
// A listener is keyed by kind (TCP, UDP, redirector) and address. Apply opens its socket
// (opened), and once every socket of the reload is open, starts it (started: the loops watch a
// TCP or UDP socket, a goroutine serves a redirector). A reload that no longer wants it retires
// it: a TCP listener's loops accept what waits in its backlog, then it closes; a UDP listener
// takes no new session and closes when its last session ends, kept meanwhile in
// Balancer.retiring; a redirector finishes the requests in flight. When a reload turns a TCP
// listener into a redirector on the same address, or back, the successor adopts a duplicate of
// the running socket, the old listener is handed over (it retires without draining the backlog,
// which the successor serves), and no queued client is reset. When a reload wants again the
// address of a retiring UDP listener, that listener is revived, socket and sessions, instead of a
// second socket being opened. Abort closes a listener and all it carries at once: the drain
// deadline has passed, or the reload that opened it failed.
//
// What a reload does to each: a kept listener (same kind and address) is rebound to the new
// service and port, and its connections keep the binding they were accepted with; a new one is
// opened, then started; a removed one is retired; a kind change is handed over; a returning UDP
// address is revived. If any socket cannot be opened, the reload is refused and the listeners it
// opened are aborted and those it revived retired again: the running set stays as it was.
//
// # Shutdown and the WaitGroups
//
// connWG counts open connections and UDP sessions (and the goroutines answering with an
// unavailable_redirect); tcpAcceptWG the started TCP listeners not yet closed; acceptWG the
// open UDP listeners and the redirectors' goroutines; loopWG the loops' goroutines. When Run's
// context ends, shutdown goes in this order, each step for a reason:
//
//  1. Under the lock, mark the balancer stopping (Apply refuses from now on) and retire every
//     listener; UDP sessions quiet for a second end, rather than wait out their idle timeout.
//  2. Wait for tcpAcceptWG: the loops have accepted every TCP backlog and closed the listeners.
//     Accepting is the only place that adds to connWG without the balancer's lock (a UDP session
//     is added under its listener's lock, only while the listener is not retired), and a
//     WaitGroup must not be added to from zero once Wait has begun.
//  3. Wait for connWG up to the drain timeout: open connections finish on their own.
//  4. At the deadline, cancel force (the redirectors' shutdown ends), have each loop close its
//     connections and abort every listener, which ends the UDP sessions.
//  5. Wait for connWG to reach zero, then for acceptWG: the UDP listeners close as their last
//     session ends, on their loop; the redirectors' goroutines return.
//  6. Stop the loops, wait for loopWG, close the loops' descriptors. The loops go last because
//     every step before them closes things by a task on a loop.
//  7. Stop the connection log's writer: it writes the lines the loops queued, the last ones
//     included, and closes its sink.
package lb
