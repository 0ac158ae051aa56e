/* gpuhost-bench's subcommands that live in files of their own; main() in
 * gpuhost-bench.c dispatches to them on argv[1]. */
#pragma once

/* gpuhost-bench sched: the scheduler's overhead per job (bench-sched.c).
 * |argc|/|argv| start at the subcommand's name. Returns the exit status:
 * 0 after a run (whatever the numbers), 1 on errors, 2 on bad usage. */
int bench_sched(int argc, char **argv);
