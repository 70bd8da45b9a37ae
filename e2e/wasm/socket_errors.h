/* Names for wasi:sockets error codes, shared by the socket test commands, so their messages
 * use the interface's own words (tests match on them, e.g. "access-denied"). */
#ifndef WEDGE_SOCKET_ERRORS_H
#define WEDGE_SOCKET_ERRORS_H

#include "sockets_command.h"

static const char *socket_error_name(wasi_sockets_network_error_code_t code) {
    /* In the order the interface declares them. */
    static const char *const names[] = {
        "unknown", "access-denied", "not-supported", "invalid-argument", "out-of-memory",
        "timeout", "concurrency-conflict", "not-in-progress", "would-block", "invalid-state",
        "new-socket-limit", "address-not-bindable", "address-in-use", "remote-unreachable",
        "connection-refused", "connection-reset", "connection-aborted", "datagram-too-large",
        "name-unresolvable", "temporary-resolver-failure", "permanent-resolver-failure",
    };
    if (code < sizeof names / sizeof names[0]) return names[code];
    return "unknown";
}

#endif
