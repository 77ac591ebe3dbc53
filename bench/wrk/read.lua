-- GET /fhir/Patient/<id>, cycling over the loaded ids (BENCH_ITEMS: one id per line).
local common = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
setup = common.setup
done = common.done
response = common.response

function init(args)
  common.init_thread()
  headers = {["Accept"] = "application/fhir+json"}
end

function request()
  return wrk.format("GET", "/fhir/Patient/" .. common.next_item(), headers)
end
