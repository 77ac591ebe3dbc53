-- Shared by read.lua, create.lua and update.lua (loaded with dofile).
-- Each wrk thread gets its slice of the work items (ids or bodies) so two connections of the
-- benchmark never update the same resource at the same moment, and stops itself after
-- `max_requests` responses (the run is bounded in time by -d and in count by this).
-- Environment: BENCH_ITEMS (a file, one item per line), BENCH_MAX_REQUESTS (per thread).

local M = {}

function M.read_lines(path)
  local items = {}
  for line in io.lines(path) do
    if #line > 0 then items[#items + 1] = line end
  end
  return items
end

local thread_counter = 0
function M.setup(thread)
  thread:set("thread_index", thread_counter)
  thread_counter = thread_counter + 1
  thread:set("thread_count", tonumber(os.getenv("BENCH_THREADS") or "1"))
end

function M.init_thread()
  local all = M.read_lines(os.getenv("BENCH_ITEMS"))
  local mine = {}
  for i = 1, #all do
    if (i - 1) % thread_count == thread_index then mine[#mine + 1] = all[i] end
  end
  items = mine
  -- start at a different place in each run so consecutive runs do not replay the same order
  cursor = tonumber(os.getenv("BENCH_OFFSET") or "0") % #items
  max_requests = tonumber(os.getenv("BENCH_MAX_REQUESTS") or "1000000")
  responses = 0
end

function M.next_item()
  cursor = cursor + 1
  if cursor > #items then cursor = 1 end
  return items[cursor]
end

function M.response(status, headers, body)
  responses = responses + 1
  if responses >= max_requests then wrk.thread:stop() end
end

-- One JSON object on stdout, after wrk's own summary, between markers.
function M.done(summary, latency, requests)
  local p = function(q) return latency:percentile(q) end
  io.write("BENCH_JSON_BEGIN\n")
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency.min, latency.mean, latency.stdev, p(50), p(90), p(99), p(99.9), latency.max))
  io.write("BENCH_JSON_END\n")
end

return M
