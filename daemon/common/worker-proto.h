/* The internal protocol between gpuhostd and gpuhost-worker.
 *
 * One socketpair (AF_UNIX, SOCK_STREAM), fd 3 in the worker. Messages are
 * the varlink codec's frames: NUL-terminated JSON objects with fds passed as
 * SCM_RIGHTS, each with a "type" member. The worker speaks first ("hello",
 * carrying GH_WORKER_PROTOCOL); the daemon kills a worker that speaks any
 * other version. Neither side trusts the other's messages beyond their
 * framing: the daemon treats a malformed worker message as a crash of that
 * worker.
 *
 * daemon -> worker
 *   ping      {seq}                           the worker answers "pong"
 *   map       {slabs: [{index, serial}]}      + one fd a slab: map read-only
 *   unmap     {slabs: [index]}                drop mappings (slab released)
 *   estimate  {job, pipeline, params, models: [{name, tensors?}]}
 *             answered by "estimated"; |models|: those of the model
 *             parameters (defaults included) that the catalogue knows,
 *             each with the tensor table planned from its headers as
 *             [[name, dtype, dim...], ...] (dtypes after conversion),
 *             none if they cannot be read (plugin ABI 1.2 model_tensor)
 *   run       {job, pipeline, params, models: [{name, tensors: [{name,
 *              dtype, shape, offset, bytes}], sha256, bytes}],
 *              workspace, steps, max_output_bytes, units}
 *             |sha256|: hex of the resident copy's files, "" if not
 *             known; |bytes|: its pool bytes (ABI 1.2 model_info)
 *             + the fds of image parameters, in the order of their "fd";
 *             |units| is the job's slice, a mask of the units of the hello
 *   slice     {job, units}                    take this slice at the next
 *                                             step boundary; "sliced" follows
 *   cancel    {job}
 *
 * worker -> daemon
 *   hello     {version, pid, pipelines: [...], refused: [{path, reason}],
 *              units, unit_sms?}   units: the slices the device splits into
 *   pong      {seq, rss}
 *   estimated {job, needs} or {job, error, message}
 *   progress  {job, step, steps, preview?: output}  + the preview's fd;
 *             at least one after each step but the last (the daemon's
 *             step watchdog); "done" tells the last
 *   sliced    {job, units}            the job now runs in this slice
 *   done      {job, outputs: [output], metadata,
 *              timing: {first_step_usec, last_step_usec}}  (CLOCK_MONOTONIC)
 *             + one fd an output
 *   failed    {job, error, message}   the plugin or host failed the job
 *   cancelled {job}
 *
 * An output is {name, kind: image|frames|bytes, size, width?, height?,
 * format?, stride?, frames?}; the fds of a message are in output order. */
#pragma once

#define GH_WORKER_PROTOCOL 3
#define GH_WORKER_FD 3

/* Largest message either side accepts (tensor tables of big models). */
#define GH_WORKER_MAX_MESSAGE (32u << 20)
#define GH_WORKER_MAX_FDS 64
#define GH_WORKER_MAX_DEPTH 16
/* Slab fds sent in one "map" message. */
#define GH_WORKER_MAP_BATCH 32
/* Jobs running at once in one worker (slice units are a 64-bit mask). */
#define GH_WORKER_MAX_JOBS 64
#define GH_WORKER_MAX_UNITS 64
/* Outputs of one job. */
#define GH_WORKER_MAX_OUTPUTS 16
