/*
 * tidewater_plugin.h: the C ABI between the Tidewater bridge (the host) and
 * a device-driver plugin, version 1.
 *
 * This header mirrors the Rust crate tidewater-plugin-api (plugins/api). A
 * test compiles a C file against it that checks every size, offset, constant
 * and function signature against that crate, so the two cannot drift.
 *
 * The contract:
 * - A plugin is a shared library exporting tidewater_plugin_v1(), which
 *   returns its static descriptor. The major version is in the symbol name.
 * - Versioned structs start with abi_version and struct_size; fields are only
 *   ever appended.
 * - Strings and bytes cross as {ptr, len}, borrowed for the duration of the
 *   call: whoever keeps them copies them. No allocation changes sides.
 * - Nothing unwinds across the boundary; status codes are plain uint32_t.
 *
 * Lifecycle, all on the plugin's own host thread, one call at a time:
 * create -> start -> on_message* -> stop -> destroy. stop and destroy are
 * called even after a failure; on_message never after one. The host
 * callbacks are thread-safe and may be called from any thread the plugin
 * starts, until destroy returns.
 */
#ifndef TIDEWATER_PLUGIN_H
#define TIDEWATER_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TW_ABI_VERSION 1u

/* Status codes (TwStatus). */
typedef uint32_t TwStatus;
#define TW_STATUS_OK 0u               /* it worked */
#define TW_STATUS_ERROR 1u            /* it failed; details were logged */
#define TW_STATUS_BUSY 2u             /* a queue is full now; nothing was done */
#define TW_STATUS_INVALID_ARGUMENT 3u /* bad topic, filter, qos, UTF-8 or payload size */
#define TW_STATUS_DENIED 4u           /* the access check refused it */
#define TW_STATUS_CLOSED 5u           /* the other side no longer accepts calls */
#define TW_STATUS_PANICKED 6u         /* the plugin is in an unknown state: mark it failed */

/* Log levels (TwLogLevel). ERROR lines also become the plugin's last_error. */
typedef uint32_t TwLogLevel;
#define TW_LOG_ERROR 1u
#define TW_LOG_WARN 2u
#define TW_LOG_INFO 3u
#define TW_LOG_DEBUG 4u
#define TW_LOG_TRACE 5u

/* UTF-8 text, not NUL-terminated.
 * OWNERSHIP: borrowed from the caller for the duration of the call; the
 * callee copies what it keeps. ptr may be NULL only when len is 0. (The name
 * and version of a descriptor are static, like the descriptor.) */
typedef struct TwStr {
    const char *ptr;
    size_t len;
} TwStr;

/* Arbitrary bytes (an MQTT payload).
 * OWNERSHIP: borrowed from the caller for the duration of the call; the
 * callee copies what it keeps. ptr may be NULL only when len is 0. */
typedef struct TwBytes {
    const uint8_t *ptr;
    size_t len;
} TwBytes;

/* A buffer the host lends to create() for its error message.
 * OWNERSHIP: host memory, writable by the plugin during create() only. Write
 * at most cap bytes of UTF-8 at ptr and set len to the number written. */
typedef struct TwErrorBuf {
    char *ptr;
    size_t cap;
    size_t len;
} TwErrorBuf;

/* Publishes through the broker. Never blocks (a full ingress queue is BUSY).
 * qos: 0 or 1 (queued at once either way); retain: 0 or 1. */
typedef TwStatus (*TwPublishFn)(void *ctx, TwStr topic, TwBytes payload, uint8_t qos,
                                uint8_t retain);
/* Adds a topic filter to the plugin's subscription, at any time. */
typedef TwStatus (*TwSubscribeFn)(void *ctx, TwStr filter);
/* One line in the bridge's log, tagged with the plugin's name. */
typedef void (*TwLogFn)(void *ctx, TwLogLevel level, TwStr message);
/* Reports whether a device behind the driver is online (1) or not (0); the
 * bridge publishes it, retained, on $tidewater/presence/<plugin>/<device>.
 * device: the driver's own id for it, 1 to 256 bytes of UTF-8. Never blocks
 * (a full ingress queue is BUSY). Added after log: use it only when
 * struct_size >= offsetof(TwHostApi, presence) + sizeof(TwPresenceFn). */
typedef TwStatus (*TwPresenceFn)(void *ctx, TwStr device, uint8_t online);

/* What the host offers. Every callback is thread-safe and non-blocking.
 * OWNERSHIP: host. The table and ctx stay valid from create() until destroy()
 * returns; join every thread that uses them in stop(). Never free them. */
typedef struct TwHostApi {
    uint32_t abi_version;
    uint32_t struct_size;
    void *ctx; /* OWNERSHIP: host; opaque, passed back to every callback */
    TwPublishFn publish;
    TwSubscribeFn subscribe;
    TwLogFn log;
    TwPresenceFn presence; /* see TwPresenceFn: check struct_size first */
} TwHostApi;

/* Creates an instance from config_json (the plugin's [plugins.config] table as
 * a JSON object). On success stores it in *instance and returns OK; otherwise
 * writes a message into *error and returns another status.
 * OWNERSHIP: host and config_json as above; instance and error are host
 * memory written during the call; the instance is the plugin's until
 * destroy(). */
typedef TwStatus (*TwCreateFn)(const TwHostApi *host, TwStr config_json, void **instance,
                               TwErrorBuf *error);
/* Starts the instance. Log the reason at ERROR before returning non-OK. */
typedef TwStatus (*TwStartFn)(void *instance);
/* One message matching the plugin's filters; topic and payload are borrowed. */
typedef TwStatus (*TwOnMessageFn)(void *instance, TwStr topic, TwBytes payload);
/* Stops the instance: afterwards no plugin thread may call the host. */
typedef TwStatus (*TwStopFn)(void *instance);
/* Frees the instance; the host never uses it again. */
typedef void (*TwDestroyFn)(void *instance);

/* What a plugin library offers.
 * OWNERSHIP: the plugin library's, static and never modified while loaded
 * (the host never unloads a plugin). */
typedef struct TwPluginDescriptor {
    uint32_t abi_version; /* TW_ABI_VERSION when built */
    uint32_t struct_size; /* sizeof(TwPluginDescriptor) when built */
    TwStr name;           /* e.g. "vendor-frame"; static */
    TwStr version;        /* e.g. "0.1.0"; static */
    TwCreateFn create;
    TwStartFn start;
    TwOnMessageFn on_message;
    TwStopFn stop;
    TwDestroyFn destroy;
} TwPluginDescriptor;

/* The one symbol a plugin exports. */
#define TW_ENTRY_SYMBOL "tidewater_plugin_v1"
const TwPluginDescriptor *tidewater_plugin_v1(void);

#ifdef __cplusplus
}
#endif

#endif /* TIDEWATER_PLUGIN_H */
