// graphile-worker driver for the kubetasks bench suite; run with the machine's node from
// bench/graphile (its own node_modules). Same commands and JSON answer as the Python drivers.
//
// Bulk enqueue: WorkerUtils.addJobs (one add_jobs() call per batch).
// Workers: run({concurrency: C}) per process, with preset.worker options from BENCH_GRAPHILE_PRESET
// (none, or the performance guide's localQueue, completeJobBatchDelay, failJobBatchDelay).
import fs from "node:fs";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { Logger, makeWorkerUtils, run, runMigrations } from "graphile-worker";

const DSN = process.env.BENCH_DSN || "";

function parseArgs(argv) {
  const opts = {
    command: argv[0], n: 0, failEvery: 0, batch: 5000, finished: 0, rate: 500, duration: 10,
    out: process.env.BENCH_OUT || "", concurrency: 8, processes: 1, schedules: 0,
  };
  for (let i = 1; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "").replace(/-(\w)/g, (_, c) => c.toUpperCase());
    const value = argv[i + 1];
    opts[key] = key === "out" || key === "dsn" ? value : Number(value);
  }
  return opts;
}

const now = () => (performance.timeOrigin + performance.now()) / 1000;

// One line "<tag> <unix time>" per task start, as bench/peers/_common.py record().
let fd = null;
function record(tag) {
  const out = process.env.BENCH_OUT;
  if (!out) return;
  if (fd === null) fd = fs.openSync(path.join(out, `starts-${process.pid}.txt`), "a");
  fs.writeSync(fd, `${tag} ${now().toFixed(6)}\n`);
}

// graphile-worker logs every completed job at info level by default; the Python peers log nothing
// per task, so keep warnings and errors only.
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(`[${level}] ${message}`);
});

const failFlag = (i, every) => (every && i % every === 0 ? 1 : 0);

const taskList = {
  bench_noop: async (payload, helpers) => {
    record(payload.i);
    // attempts is already incremented when the job is handed out: 1 on the first attempt.
    if (payload.f && helpers.job.attempts === 1) throw new Error(`fail once ${payload.i}`);
  },
  bench_sched: async (payload) => {
    record(`s${payload.k}`);
  },
};

async function withUtils(fn) {
  const utils = await makeWorkerUtils({ connectionString: DSN, logger });
  try {
    return await fn(utils);
  } finally {
    await utils.release();
  }
}

async function enqueue(o) {
  return withUtils(async (utils) => {
    await utils.migrate();
    const t0 = performance.now();
    for (let start = 0; start < o.n; start += o.batch) {
      const specs = [];
      for (let i = start; i < Math.min(o.n, start + o.batch); i++) {
        specs.push({ identifier: "bench_noop", payload: { i, f: failFlag(i, o.failEvery) } });
      }
      await utils.addJobs(specs);
    }
    return { seconds: (performance.now() - t0) / 1000 };
  });
}

async function prefill(o) {
  // Unmeasured deep-queue set-up through graphile's own add_jobs(), in server-side chunks.
  // graphile-worker deletes completed jobs, so there are no finished rows to add.
  return withUtils(async (utils) => {
    await utils.withPgClient(async (client) => {
      const step = 100000;
      for (let start = 0; start < o.n; start += step) {
        await client.query(
          `select count(*) from graphile_worker.add_jobs(array(
             select row('bench_noop', json_build_object('i', g, 'f', 0), null, null, null, null, null, null)
                    ::graphile_worker.job_spec
             from generate_series($1::int, $2::int) as g))`,
          [start, Math.min(o.n, start + step) - 1],
        );
      }
      await client.query("analyze graphile_worker._private_jobs");
    });
    return {};
  });
}

async function steady(o) {
  return withUtils(async (utils) => {
    const total = Math.floor(o.rate * o.duration);
    const lines = [];
    const t0 = now();
    for (let i = 0; i < total; i++) {
      const delay = t0 + i / o.rate - now();
      if (delay > 0) await new Promise((r) => setTimeout(r, delay * 1000));
      await utils.addJob("bench_noop", { i, f: 0 });
      lines.push(`${i} ${now().toFixed(6)}\n`);
    }
    fs.writeFileSync(path.join(o.out, "enqueued.txt"), lines.join(""));
    return { enqueued: total };
  });
}

async function worker(o) {
  const crontab = [];
  for (let k = 0; k < o.schedules; k++) {
    crontab.push(`* * * * * bench_sched ?id=s${k} {"k":${k}}`);
  }
  // The exact preset.worker options come from the adapter (bench/systems/peers.py): {} for
  // graphile's defaults, the performance guide's localQueue and batch delays for the best row.
  const preset = JSON.parse(process.env.BENCH_GRAPHILE_PRESET || "{}");
  const runner = await run({
    connectionString: DSN,
    concurrency: o.concurrency,
    maxPoolSize: Math.max(10, o.concurrency + 2),
    taskList,
    crontab: crontab.join("\n"),
    logger,
    preset: { worker: preset },
  });
  await runner.promise;
  return {};
}

const commands = {
  schema: async () => {
    await runMigrations({ connectionString: DSN, logger });
    return {};
  },
  enqueue,
  prefill: (o) => prefill(o),
  probe: () => withUtils(async (utils) => {
    await utils.addJob("bench_noop", { i: -1, f: 0 });
    return {};
  }),
  steady,
  worker,
};

const opts = parseArgs(process.argv.slice(2));
const command = commands[opts.command];
if (!command) {
  console.error(`unknown command ${opts.command}`);
  process.exit(2);
}
const result = await command(opts);
process.stdout.write(`${JSON.stringify(result)}\n`);
process.exit(0);
