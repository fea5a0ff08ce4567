/*
 * hagrid-edge instruction counter: a QEMU TCG plugin for user-mode emulation (qemu-aarch64).
 *
 * Counts the guest instructions executed, and writes the running count to a file every time
 * the guest makes the marker system call (number MARKER_SYSCALL, an unused number: the kernel
 * and qemu both answer ENOSYS and do nothing else). The guest passes a tag in the first
 * argument; each marker becomes one line "<tag> <instructions so far>", so the difference
 * between two markers is the cost of the code between them.
 *
 * Counting is per translated block (one add of the block's length per execution), not per
 * instruction callback, which keeps the emulation fast. The counter is shared by all vCPUs
 * (guest threads) without atomics: run the measured code with one thread.
 *
 * Arguments: out=FILE (required) -- where the marker lines go.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <qemu-plugin.h>

#define MARKER_SYSCALL 0x4845 /* keep equal to MARKER_SYSCALL in benchmarks/emulate_counts.py */

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

static uint64_t executed;
static FILE *out;

static void on_tb_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &executed,
                                             qemu_plugin_tb_n_insns(tb));
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1,
                       uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6,
                       uint64_t a7, uint64_t a8)
{
    (void)id, (void)vcpu, (void)a2, (void)a3, (void)a4, (void)a5, (void)a6, (void)a7, (void)a8;
    if (num != MARKER_SYSCALL) {
        return;
    }
    fprintf(out, "%" PRIu64 " %" PRIu64 "\n", a1, executed);
    fflush(out);
}

static void on_plugin_exit(qemu_plugin_id_t id, void *p)
{
    (void)id, (void)p;
    fprintf(out, "end %" PRIu64 "\n", executed);
    fclose(out);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    const char *path = NULL;
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            path = argv[i] + 4;
        } else {
            fprintf(stderr, "insn_count: unknown argument %s (expected out=FILE)\n", argv[i]);
            return -1;
        }
    }
    if (path == NULL || *path == '\0') {
        fprintf(stderr, "insn_count: missing out=FILE\n");
        return -1;
    }
    out = fopen(path, "w");
    if (out == NULL) {
        perror(path);
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_translate);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, on_plugin_exit, NULL);
    return 0;
}
