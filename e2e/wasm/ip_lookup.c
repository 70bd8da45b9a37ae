/* Resolves the name given as its argument with wasi:sockets/ip-name-lookup and prints one
 * address a line, exit 0. On failure it prints "cannot resolve <name>: <error-code>" to
 * stderr and exits 1, so tests can tell a refused lookup from a name that does not exist.
 * Built against the bindings for the world `sockets-command`. */

#include <stdio.h>
#include <stdlib.h>

#include "socket_errors.h"
#include "sockets_command.h"

static void print_address(const wasi_sockets_network_ip_address_t *address) {
    if (address->tag == WASI_SOCKETS_NETWORK_IP_ADDRESS_IPV4) {
        const wasi_sockets_network_ipv4_address_t *v4 = &address->val.ipv4;
        printf("%u.%u.%u.%u\n", v4->f0, v4->f1, v4->f2, v4->f3);
    } else {
        const wasi_sockets_network_ipv6_address_t *v6 = &address->val.ipv6;
        printf("%x:%x:%x:%x:%x:%x:%x:%x\n", v6->f0, v6->f1, v6->f2, v6->f3, v6->f4, v6->f5,
               v6->f6, v6->f7);
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: ip-lookup NAME\n");
        return 1;
    }
    const char *name_text = argv[1];
    wasi_sockets_network_own_network_t network =
        wasi_sockets_instance_network_instance_network();
    sockets_command_string_t name;
    sockets_command_string_set(&name, name_text);
    wasi_sockets_ip_name_lookup_own_resolve_address_stream_t addresses;
    wasi_sockets_network_error_code_t error;
    if (!wasi_sockets_ip_name_lookup_resolve_addresses(
            wasi_sockets_network_borrow_network(network), &name, &addresses, &error)) {
        fprintf(stderr, "cannot resolve %s: %s\n", name_text, socket_error_name(error));
        return 1;
    }
    wasi_sockets_ip_name_lookup_borrow_resolve_address_stream_t addresses_ref =
        wasi_sockets_ip_name_lookup_borrow_resolve_address_stream(addresses);
    for (;;) {
        wasi_sockets_ip_name_lookup_option_ip_address_t next;
        if (wasi_sockets_ip_name_lookup_method_resolve_address_stream_resolve_next_address(
                addresses_ref, &next, &error)) {
            if (!next.is_some) break;
            print_address(&next.val);
        } else if (error == WASI_SOCKETS_NETWORK_ERROR_CODE_WOULD_BLOCK) {
            wasi_io_poll_own_pollable_t ready =
                wasi_sockets_ip_name_lookup_method_resolve_address_stream_subscribe(addresses_ref);
            wasi_io_poll_method_pollable_block(wasi_io_poll_borrow_pollable(ready));
            wasi_io_poll_pollable_drop_own(ready);
        } else {
            fprintf(stderr, "cannot resolve %s: %s\n", name_text, socket_error_name(error));
            return 1;
        }
    }
    return 0;
}
