-- POST /fhir/Patient with new patients (BENCH_ITEMS: one JSON resource per line, no id).
local common = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
setup = common.setup
done = common.done
response = common.response

function init(args)
  common.init_thread()
  headers = {["Accept"] = "application/fhir+json", ["Content-Type"] = "application/fhir+json"}
end

function request()
  return wrk.format("POST", "/fhir/Patient", headers, common.next_item())
end
