/* The HTTP handler of the end-to-end tests, one request per instance:
 *   GET /any/path          200 "hello from wasm http: GET /any/path\n"
 *   /sleep/<ms>            waits <ms> milliseconds, then "slept <ms>\n"
 *   POST /echo             the request body, unchanged
 *   /fetch/<host:port>/<p> GETs http://<host:port>/<p>: "fetched <status>: <body>" or 502
 *   /env/<NAME>            exactly the value of the environment variable NAME, or 404
 * Built against the bindings that wit-bindgen generates for the world `http-hello`. */

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_hello.h"

/* The one-shot bodies here are small; a chunk this size is plenty and within what a blocking
 * write may take in one call. */
#define CHUNK_SIZE 4096

struct buffer {
    uint8_t *data;
    size_t len;
    size_t capacity;
};

static void buffer_append(struct buffer *buffer, const void *bytes, size_t len) {
    if (buffer->len + len > buffer->capacity) {
        size_t capacity = buffer->capacity ? buffer->capacity : 256;
        while (capacity < buffer->len + len) capacity *= 2;
        buffer->data = realloc(buffer->data, capacity);
        if (!buffer->data) abort();
        buffer->capacity = capacity;
    }
    memcpy(buffer->data + buffer->len, bytes, len);
    buffer->len += len;
}

static void buffer_printf(struct buffer *buffer, const char *format, ...) {
    char text[512];
    va_list args;
    va_start(args, format);
    int len = vsnprintf(text, sizeof text, format, args);
    va_end(args);
    if (len < 0) return;
    buffer_append(buffer, text, (size_t)len < sizeof text ? (size_t)len : sizeof text - 1);
}

static bool starts_with(const char *text, const char *prefix) {
    return strncmp(text, prefix, strlen(prefix)) == 0;
}

/* A C string copied out of a component string, which is not NUL-terminated. */
static char *string_to_c(const http_hello_string_t *string) {
    char *text = malloc(string->len + 1);
    if (!text) abort();
    memcpy(text, string->ptr, string->len);
    text[string->len] = 0;
    return text;
}

static char *method_name(const wasi_http_types_method_t *method) {
    static const char *const names[] = {
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    };
    if (method->tag == WASI_HTTP_TYPES_METHOD_OTHER) return string_to_c(&method->val.other);
    return strdup(names[method->tag]);
}

/* The error-code cases in the order the interface declares them, so a failed fetch says
 * what went wrong in the interface's own words. */
static const char *error_code_name(const wasi_http_types_error_code_t *error) {
    static const char *const names[] = {
        "DNS-timeout", "DNS-error", "destination-not-found", "destination-unavailable",
        "destination-IP-prohibited", "destination-IP-unroutable", "connection-refused",
        "connection-terminated", "connection-timeout", "connection-read-timeout",
        "connection-write-timeout", "connection-limit-reached", "TLS-protocol-error",
        "TLS-certificate-error", "TLS-alert-received", "HTTP-request-denied",
        "HTTP-request-length-required", "HTTP-request-body-size",
        "HTTP-request-method-invalid", "HTTP-request-URI-invalid", "HTTP-request-URI-too-long",
        "HTTP-request-header-section-size", "HTTP-request-header-size",
        "HTTP-request-trailer-section-size", "HTTP-request-trailer-size",
        "HTTP-response-incomplete", "HTTP-response-header-section-size",
        "HTTP-response-header-size", "HTTP-response-body-size",
        "HTTP-response-trailer-section-size", "HTTP-response-trailer-size",
        "HTTP-response-transfer-coding", "HTTP-response-content-coding",
        "HTTP-response-timeout", "HTTP-upgrade-failed", "HTTP-protocol-error",
        "loop-detected", "configuration-error", "internal-error",
    };
    if (error->tag < sizeof names / sizeof names[0]) return names[error->tag];
    return "unknown error";
}

static bool write_all(wasi_io_streams_borrow_output_stream_t stream, const uint8_t *data,
                      size_t len) {
    while (len > 0) {
        size_t chunk = len < CHUNK_SIZE ? len : CHUNK_SIZE;
        http_hello_list_u8_t contents = {(uint8_t *)data, chunk};
        wasi_io_streams_stream_error_t error;
        if (!wasi_io_streams_method_output_stream_blocking_write_and_flush(stream, &contents,
                                                                           &error)) {
            if (error.tag == WASI_IO_STREAMS_STREAM_ERROR_LAST_OPERATION_FAILED)
                wasi_io_error_error_drop_own(error.val.last_operation_failed);
            return false;
        }
        data += chunk;
        len -= chunk;
    }
    return true;
}

/* Reads an incoming body to its end and finishes it; false if it broke off early. */
static bool read_body(wasi_http_types_own_incoming_body_t body, struct buffer *into) {
    wasi_http_types_own_input_stream_t stream;
    if (!wasi_http_types_method_incoming_body_stream(wasi_http_types_borrow_incoming_body(body),
                                                     &stream))
        return false;
    bool complete;
    for (;;) {
        http_hello_list_u8_t chunk;
        wasi_io_streams_stream_error_t error;
        if (!wasi_io_streams_method_input_stream_blocking_read(
                wasi_io_streams_borrow_input_stream(stream), 64 * 1024, &chunk, &error)) {
            complete = error.tag == WASI_IO_STREAMS_STREAM_ERROR_CLOSED;
            if (!complete) wasi_io_error_error_drop_own(error.val.last_operation_failed);
            break;
        }
        buffer_append(into, chunk.ptr, chunk.len);
        http_hello_list_u8_free(&chunk);
    }
    /* The stream is a child of the body and must be gone before the body is finished. */
    wasi_io_streams_input_stream_drop_own(stream);
    wasi_http_types_future_trailers_drop_own(wasi_http_types_static_incoming_body_finish(body));
    return complete;
}

static void respond(exports_wasi_http_incoming_handler_own_response_outparam_t out,
                    uint16_t status, const struct buffer *body) {
    wasi_http_types_own_fields_t headers = wasi_http_types_constructor_fields();
    http_hello_string_t name;
    http_hello_string_set(&name, "content-type");
    wasi_http_types_field_value_t value = {(uint8_t *)"text/plain", strlen("text/plain")};
    wasi_http_types_header_error_t header_error;
    wasi_http_types_method_fields_append(wasi_http_types_borrow_fields(headers), &name, &value,
                                         &header_error);

    wasi_http_types_own_outgoing_response_t response =
        wasi_http_types_constructor_outgoing_response(headers);
    wasi_http_types_borrow_outgoing_response_t response_ref =
        wasi_http_types_borrow_outgoing_response(response);
    wasi_http_types_method_outgoing_response_set_status_code(response_ref, status);
    wasi_http_types_own_outgoing_body_t outgoing_body;
    wasi_http_types_method_outgoing_response_body(response_ref, &outgoing_body);

    /* Handing the response over before the body is written lets the host send the head
     * while the body is still being produced. */
    wasi_http_types_result_own_outgoing_response_error_code_t result = {
        .is_err = false,
        .val = {.ok = response},
    };
    wasi_http_types_static_response_outparam_set(out, &result);

    wasi_http_types_own_output_stream_t stream;
    if (wasi_http_types_method_outgoing_body_write(
            wasi_http_types_borrow_outgoing_body(outgoing_body), &stream)) {
        write_all(wasi_io_streams_borrow_output_stream(stream), body->data, body->len);
        /* A child of the body, like the input stream above. */
        wasi_io_streams_output_stream_drop_own(stream);
    }
    wasi_http_types_error_code_t finish_error;
    wasi_http_types_static_outgoing_body_finish(outgoing_body, NULL, &finish_error);
}

static void sleep_ms(uint64_t milliseconds) {
    wasi_io_poll_own_pollable_t timer =
        wasi_clocks_monotonic_clock_subscribe_duration(milliseconds * 1000 * 1000);
    wasi_io_poll_method_pollable_block(wasi_io_poll_borrow_pollable(timer));
    wasi_io_poll_pollable_drop_own(timer);
}

/* GETs http://<target> where target is "host:port/path"; the status to answer with. */
static uint16_t fetch(const char *target, struct buffer *reply) {
    const char *slash = strchr(target, '/');
    size_t authority_len = slash ? (size_t)(slash - target) : strlen(target);
    http_hello_string_t authority = {(uint8_t *)target, authority_len};
    http_hello_string_t path;
    http_hello_string_set(&path, slash ? slash : "/");

    wasi_http_types_own_outgoing_request_t request =
        wasi_http_types_constructor_outgoing_request(wasi_http_types_constructor_fields());
    wasi_http_types_borrow_outgoing_request_t request_ref =
        wasi_http_types_borrow_outgoing_request(request);
    wasi_http_types_scheme_t scheme = {.tag = WASI_HTTP_TYPES_SCHEME_HTTP};
    wasi_http_types_method_outgoing_request_set_scheme(request_ref, &scheme);
    wasi_http_types_method_outgoing_request_set_authority(request_ref, &authority);
    wasi_http_types_method_outgoing_request_set_path_with_query(request_ref, &path);

    wasi_http_types_own_future_incoming_response_t pending;
    wasi_http_types_error_code_t error;
    if (!wasi_http_outgoing_handler_handle(request, NULL, &pending, &error)) {
        buffer_printf(reply, "fetch failed: %s\n", error_code_name(&error));
        return 502;
    }
    wasi_http_types_borrow_future_incoming_response_t pending_ref =
        wasi_http_types_borrow_future_incoming_response(pending);
    wasi_io_poll_own_pollable_t ready =
        wasi_http_types_method_future_incoming_response_subscribe(pending_ref);
    wasi_io_poll_method_pollable_block(wasi_io_poll_borrow_pollable(ready));
    wasi_io_poll_pollable_drop_own(ready);

    wasi_http_types_result_result_own_incoming_response_error_code_void_t outcome;
    bool arrived = wasi_http_types_method_future_incoming_response_get(pending_ref, &outcome);
    wasi_http_types_future_incoming_response_drop_own(pending);
    if (!arrived || outcome.is_err) {
        buffer_printf(reply, "fetch failed: no response\n");
        return 502;
    }
    if (outcome.val.ok.is_err) {
        buffer_printf(reply, "fetch failed: %s\n", error_code_name(&outcome.val.ok.val.err));
        return 502;
    }
    wasi_http_types_own_incoming_response_t response = outcome.val.ok.val.ok;
    wasi_http_types_borrow_incoming_response_t response_ref =
        wasi_http_types_borrow_incoming_response(response);
    uint16_t status = wasi_http_types_method_incoming_response_status(response_ref);
    buffer_printf(reply, "fetched %u: ", status);
    wasi_http_types_own_incoming_body_t body;
    bool complete = wasi_http_types_method_incoming_response_consume(response_ref, &body) &&
                    read_body(body, reply);
    wasi_http_types_incoming_response_drop_own(response);
    if (!complete) {
        reply->len = 0;
        buffer_printf(reply, "fetch failed: the response body broke off\n");
        return 502;
    }
    return 200;
}

/* Answers the value of the environment variable named by `name` (up to a '?'). */
static uint16_t lookup_env(const char *name, struct buffer *reply) {
    size_t name_len = strcspn(name, "?");
    http_hello_list_tuple2_string_string_t variables;
    wasi_cli_environment_get_environment(&variables);
    uint16_t status = 404;
    for (size_t i = 0; i < variables.len; i++) {
        const http_hello_string_t *key = &variables.ptr[i].f0;
        const http_hello_string_t *value = &variables.ptr[i].f1;
        if (key->len == name_len && memcmp(key->ptr, name, name_len) == 0) {
            buffer_append(reply, value->ptr, value->len);
            status = 200;
            break;
        }
    }
    http_hello_list_tuple2_string_string_free(&variables);
    if (status == 404) buffer_printf(reply, "%.*s is not set\n", (int)name_len, name);
    return status;
}

void exports_wasi_http_incoming_handler_handle(
    exports_wasi_http_incoming_handler_own_incoming_request_t request,
    exports_wasi_http_incoming_handler_own_response_outparam_t out) {
    wasi_http_types_borrow_incoming_request_t request_ref =
        wasi_http_types_borrow_incoming_request(request);
    wasi_http_types_method_t method_value;
    wasi_http_types_method_incoming_request_method(request_ref, &method_value);
    char *method = method_name(&method_value);
    wasi_http_types_method_free(&method_value);
    http_hello_string_t path_value;
    char *path = strdup("/");
    if (wasi_http_types_method_incoming_request_path_with_query(request_ref, &path_value)) {
        free(path);
        path = string_to_c(&path_value);
        http_hello_string_free(&path_value);
    }

    struct buffer reply = {0};
    uint16_t status = 200;
    if (starts_with(path, "/sleep/")) {
        uint64_t milliseconds = strtoull(path + strlen("/sleep/"), NULL, 10);
        sleep_ms(milliseconds);
        buffer_printf(&reply, "slept %llu\n", (unsigned long long)milliseconds);
    } else if (strcmp(method, "POST") == 0 && strcmp(path, "/echo") == 0) {
        wasi_http_types_own_incoming_body_t body;
        if (!wasi_http_types_method_incoming_request_consume(request_ref, &body) ||
            !read_body(body, &reply)) {
            reply.len = 0;
            buffer_printf(&reply, "cannot read the request body\n");
            status = 400;
        }
    } else if (starts_with(path, "/fetch/")) {
        status = fetch(path + strlen("/fetch/"), &reply);
    } else if (starts_with(path, "/env/")) {
        status = lookup_env(path + strlen("/env/"), &reply);
    } else {
        buffer_printf(&reply, "hello from wasm http: %s %s\n", method, path);
    }

    /* The request (and any body read above) is no longer needed once the answer is known. */
    wasi_http_types_incoming_request_drop_own(request);
    respond(out, status, &reply);
    free(reply.data);
    free(path);
    free(method);
}
