-- PUT /fhir/Patient/<id> (BENCH_ITEMS: lines "<id> <JSON resource with that id>").
local common = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
setup = common.setup
done = common.done
response = common.response

function init(args)
  common.init_thread()
  headers = {["Accept"] = "application/fhir+json", ["Content-Type"] = "application/fhir+json"}
end

function request()
  local line = common.next_item()
  local sp = string.find(line, " ", 1, true)
  return wrk.format("PUT", "/fhir/Patient/" .. string.sub(line, 1, sp - 1), headers, string.sub(line, sp + 1))
end
