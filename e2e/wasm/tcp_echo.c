/* An echo server on wasi:sockets for the end-to-end tests. It binds 0.0.0.0:$PORT (7000
 * when unset), prints "listening on <port>" once it accepts connections, and sends every byte
 * it receives back to its sender. With the argument `udp` it echoes UDP datagrams instead of
 * TCP streams. It serves many TCP connections at once by polling the listener and all
 * connections together, and closes a connection when the peer has finished sending.
 * Built against the bindings that wit-bindgen generates for the world `sockets-command`. */

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "socket_errors.h"
#include "sockets_command.h"

/* The most a single blocking write may take, so one read always fits in one write. */
#define CHUNK_SIZE 4096
#define MAX_CONNECTIONS 64

typedef wasi_sockets_network_error_code_t error_code;

struct connection {
    wasi_sockets_tcp_own_tcp_socket_t socket;
    wasi_io_streams_own_input_stream_t input;
    wasi_io_streams_own_output_stream_t output;
    wasi_io_poll_own_pollable_t readable;
};

static struct connection connections[MAX_CONNECTIONS];
static size_t connection_count;

static void fail(const char *step, error_code code) {
    fprintf(stderr, "%s: %s\n", step, socket_error_name(code));
    exit(1);
}

static void wait_for(wasi_io_poll_own_pollable_t pollable) {
    wasi_io_poll_method_pollable_block(wasi_io_poll_borrow_pollable(pollable));
    wasi_io_poll_pollable_drop_own(pollable);
}

static wasi_sockets_network_ip_socket_address_t any_ipv4_address(uint16_t port) {
    wasi_sockets_network_ip_socket_address_t address = {
        .tag = WASI_SOCKETS_NETWORK_IP_SOCKET_ADDRESS_IPV4,
        .val = {.ipv4 = {.port = port, .address = {0, 0, 0, 0}}},
    };
    return address;
}

typedef bool (*tcp_finish_step)(wasi_sockets_tcp_borrow_tcp_socket_t, error_code *);

/* Completes the second half of a two-phase socket operation, waiting while it would block. */
static void finish_tcp(const char *step, wasi_sockets_tcp_borrow_tcp_socket_t socket,
                       tcp_finish_step finish) {
    error_code error;
    while (!finish(socket, &error)) {
        if (error != WASI_SOCKETS_NETWORK_ERROR_CODE_WOULD_BLOCK) fail(step, error);
        wait_for(wasi_sockets_tcp_method_tcp_socket_subscribe(socket));
    }
}

static void close_connection(size_t index) {
    struct connection *connection = &connections[index];
    /* Children go before their parents: the pollable belongs to the input stream and both
     * streams belong to the socket. */
    wasi_io_poll_pollable_drop_own(connection->readable);
    wasi_io_streams_input_stream_drop_own(connection->input);
    wasi_io_streams_output_stream_drop_own(connection->output);
    wasi_sockets_tcp_tcp_socket_drop_own(connection->socket);
    connections[index] = connections[--connection_count];
}

static void accept_pending(wasi_sockets_tcp_borrow_tcp_socket_t listener) {
    for (;;) {
        wasi_sockets_tcp_tuple3_own_tcp_socket_own_input_stream_own_output_stream_t accepted;
        error_code error;
        /* would-block means nobody else is waiting; a client that gave up before it was
         * accepted is no reason to stop serving the others. */
        if (!wasi_sockets_tcp_method_tcp_socket_accept(listener, &accepted, &error)) return;
        if (connection_count == MAX_CONNECTIONS) {
            fprintf(stderr, "too many connections, closing the newest\n");
            wasi_io_streams_input_stream_drop_own(accepted.f1);
            wasi_io_streams_output_stream_drop_own(accepted.f2);
            wasi_sockets_tcp_tcp_socket_drop_own(accepted.f0);
            continue;
        }
        struct connection *connection = &connections[connection_count++];
        connection->socket = accepted.f0;
        connection->input = accepted.f1;
        connection->output = accepted.f2;
        connection->readable = wasi_io_streams_method_input_stream_subscribe(
            wasi_io_streams_borrow_input_stream(connection->input));
    }
}

/* Echoes whatever has arrived; false once the peer has finished sending or the connection
 * broke. The write blocks, which is fine for test clients that read their echo. */
static bool echo_available(struct connection *connection) {
    sockets_command_list_u8_t chunk;
    wasi_io_streams_stream_error_t error;
    if (!wasi_io_streams_method_input_stream_read(
            wasi_io_streams_borrow_input_stream(connection->input), CHUNK_SIZE, &chunk,
            &error)) {
        if (error.tag == WASI_IO_STREAMS_STREAM_ERROR_LAST_OPERATION_FAILED)
            wasi_io_error_error_drop_own(error.val.last_operation_failed);
        return false;
    }
    bool written = true;
    if (chunk.len > 0) {
        written = wasi_io_streams_method_output_stream_blocking_write_and_flush(
            wasi_io_streams_borrow_output_stream(connection->output), &chunk, &error);
        if (!written && error.tag == WASI_IO_STREAMS_STREAM_ERROR_LAST_OPERATION_FAILED)
            wasi_io_error_error_drop_own(error.val.last_operation_failed);
    }
    sockets_command_list_u8_free(&chunk);
    return written;
}

static void serve_tcp(wasi_sockets_network_borrow_network_t network, uint16_t port) {
    wasi_sockets_tcp_own_tcp_socket_t listener;
    error_code error;
    if (!wasi_sockets_tcp_create_socket_create_tcp_socket(
            WASI_SOCKETS_NETWORK_IP_ADDRESS_FAMILY_IPV4, &listener, &error))
        fail("create-tcp-socket", error);
    wasi_sockets_tcp_borrow_tcp_socket_t listener_ref =
        wasi_sockets_tcp_borrow_tcp_socket(listener);
    wasi_sockets_network_ip_socket_address_t address = any_ipv4_address(port);
    if (!wasi_sockets_tcp_method_tcp_socket_start_bind(listener_ref, network, &address, &error))
        fail("bind", error);
    finish_tcp("bind", listener_ref, wasi_sockets_tcp_method_tcp_socket_finish_bind);
    if (!wasi_sockets_tcp_method_tcp_socket_start_listen(listener_ref, &error))
        fail("listen", error);
    finish_tcp("listen", listener_ref, wasi_sockets_tcp_method_tcp_socket_finish_listen);
    printf("listening on %u\n", port);
    fflush(stdout);

    wasi_io_poll_own_pollable_t acceptable =
        wasi_sockets_tcp_method_tcp_socket_subscribe(listener_ref);
    for (;;) {
        /* Slot 0 is the listener, slot i + 1 is connection i. */
        wasi_io_poll_borrow_pollable_t waiting[1 + MAX_CONNECTIONS];
        waiting[0] = wasi_io_poll_borrow_pollable(acceptable);
        for (size_t i = 0; i < connection_count; i++)
            waiting[1 + i] = wasi_io_poll_borrow_pollable(connections[i].readable);
        wasi_io_poll_list_borrow_pollable_t waiting_list = {waiting, 1 + connection_count};
        sockets_command_list_u32_t ready;
        wasi_io_poll_poll(&waiting_list, &ready);

        bool is_ready[1 + MAX_CONNECTIONS] = {false};
        for (size_t i = 0; i < ready.len; i++) is_ready[ready.ptr[i]] = true;
        sockets_command_list_u32_free(&ready);
        /* From the last connection down, because closing one moves the last into its slot. */
        for (size_t slot = connection_count; slot > 0; slot--) {
            if (is_ready[slot] && !echo_available(&connections[slot - 1]))
                close_connection(slot - 1);
        }
        if (is_ready[0]) accept_pending(listener_ref);
    }
}

/* Waits until the outgoing stream takes at least one datagram. */
static void wait_until_sendable(wasi_sockets_udp_borrow_outgoing_datagram_stream_t outgoing) {
    for (;;) {
        uint64_t permitted;
        error_code error;
        if (!wasi_sockets_udp_method_outgoing_datagram_stream_check_send(outgoing, &permitted,
                                                                         &error))
            fail("check-send", error);
        if (permitted > 0) return;
        wait_for(wasi_sockets_udp_method_outgoing_datagram_stream_subscribe(outgoing));
    }
}

static void serve_udp(wasi_sockets_network_borrow_network_t network, uint16_t port) {
    wasi_sockets_udp_own_udp_socket_t socket;
    error_code error;
    if (!wasi_sockets_udp_create_socket_create_udp_socket(
            WASI_SOCKETS_NETWORK_IP_ADDRESS_FAMILY_IPV4, &socket, &error))
        fail("create-udp-socket", error);
    wasi_sockets_udp_borrow_udp_socket_t socket_ref = wasi_sockets_udp_borrow_udp_socket(socket);
    wasi_sockets_network_ip_socket_address_t address = any_ipv4_address(port);
    if (!wasi_sockets_udp_method_udp_socket_start_bind(socket_ref, network, &address, &error))
        fail("bind", error);
    while (!wasi_sockets_udp_method_udp_socket_finish_bind(socket_ref, &error)) {
        if (error != WASI_SOCKETS_NETWORK_ERROR_CODE_WOULD_BLOCK) fail("bind", error);
        wait_for(wasi_sockets_udp_method_udp_socket_subscribe(socket_ref));
    }
    wasi_sockets_udp_tuple2_own_incoming_datagram_stream_own_outgoing_datagram_stream_t streams;
    if (!wasi_sockets_udp_method_udp_socket_stream(socket_ref, NULL, &streams, &error))
        fail("stream", error);
    wasi_sockets_udp_borrow_incoming_datagram_stream_t incoming =
        wasi_sockets_udp_borrow_incoming_datagram_stream(streams.f0);
    wasi_sockets_udp_borrow_outgoing_datagram_stream_t outgoing =
        wasi_sockets_udp_borrow_outgoing_datagram_stream(streams.f1);
    printf("listening on %u\n", port);
    fflush(stdout);

    wasi_io_poll_own_pollable_t receivable =
        wasi_sockets_udp_method_incoming_datagram_stream_subscribe(incoming);
    for (;;) {
        wasi_io_poll_method_pollable_block(wasi_io_poll_borrow_pollable(receivable));
        wasi_sockets_udp_list_incoming_datagram_t received;
        if (!wasi_sockets_udp_method_incoming_datagram_stream_receive(incoming, 16, &received,
                                                                      &error))
            fail("receive", error);
        for (size_t i = 0; i < received.len; i++) {
            wasi_sockets_udp_outgoing_datagram_t reply = {
                .data = received.ptr[i].data,
                .remote_address = {.is_some = true, .val = received.ptr[i].remote_address},
            };
            wasi_sockets_udp_list_outgoing_datagram_t batch = {&reply, 1};
            uint64_t sent;
            wait_until_sendable(outgoing);
            if (!wasi_sockets_udp_method_outgoing_datagram_stream_send(outgoing, &batch, &sent,
                                                                       &error))
                fprintf(stderr, "send: %s\n", socket_error_name(error));
        }
        wasi_sockets_udp_list_incoming_datagram_free(&received);
    }
}

int main(int argc, char **argv) {
    const char *port_text = getenv("PORT");
    uint16_t port = port_text ? (uint16_t)atoi(port_text) : 7000;
    wasi_sockets_network_own_network_t network =
        wasi_sockets_instance_network_instance_network();
    wasi_sockets_network_borrow_network_t network_ref =
        wasi_sockets_network_borrow_network(network);
    if (argc > 1 && strcmp(argv[1], "udp") == 0)
        serve_udp(network_ref, port);
    else
        serve_tcp(network_ref, port);
    return 0;
}
