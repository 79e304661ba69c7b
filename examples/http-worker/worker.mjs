// An HTTP worker in Node.js (no packages: Node 18+ has fetch): serves the task
// "shout_node" through dagnats serve's HTTP bridge.
//
//   DAGNATS_HTTP_URL=http://127.0.0.1:8080 DAGNATS_BRIDGE_TOKEN=... node worker.mjs
//
// The protocol: connect once, then long-poll for tasks and resolve each with a
// TaskResolution (complete | fail | continue | checkpoint | heartbeat | pause |
// send_signal | wait_signal).

const base = process.env.DAGNATS_HTTP_URL || "http://127.0.0.1:8080";
const token = process.env.DAGNATS_BRIDGE_TOKEN;
const headers = { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) };
const tasks = ["shout_node"];
let running = true;
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => { running = false; process.exit(0); });

async function call(path, body) {
  const response = await fetch(base + path, { method: "POST", headers, body: JSON.stringify(body) });
  const answer = await response.json();
  if (!response.ok) throw new Error(`${path}: ${response.status} ${answer.error}: ${answer.message}`);
  return answer;
}

async function serve(task) {
  const resolve = (resolution) => call(`/v1/tasks/${task.task_id}/resolve`, resolution);
  if (typeof task.input !== "string") {
    return resolve({ action: "fail", error: "shout_node takes a string", failure_type: "permanent" });
  }
  await resolve({ action: "heartbeat" });
  await resolve({ action: "checkpoint", checkpoint: { seen: task.input.length } });
  return resolve({ action: "complete", output: `${task.input.toUpperCase()} (shouted by Node)` });
}

const { worker_id } = await call("/v1/workers/connect", { task_types: tasks });
console.log(`node worker ready: ${worker_id} serving ${tasks.join(", ")} via ${base}`);
while (running) {
  try {
    const polled = await call("/v1/tasks/poll", { worker_id, task_types: tasks, max_tasks: 4, timeout_ms: 20000 });
    for (const task of polled) {
      await serve(task);
      console.log(`${task.run_id} ${task.step_id}: done`);
    }
  } catch (err) {
    console.error(`poll failed: ${err.message}; retrying`);
    await new Promise((r) => setTimeout(r, 1000));
  }
}
