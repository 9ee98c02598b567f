/* A plugin built for a future ABI version 2: the host must refuse it before
 * reading anything past abi_version and struct_size. */
#include <stdint.h>

typedef struct FutureDescriptor {
    uint32_t abi_version;
    uint32_t struct_size;
} FutureDescriptor;

static const FutureDescriptor DESCRIPTOR = {2, sizeof(FutureDescriptor)};

const void *tidewater_plugin_v1(void) {
    return &DESCRIPTOR;
}
