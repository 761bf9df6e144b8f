-- Runs the Argo CD health check from the chart README (Lua 5.1, like Argo CD's gopher-lua) against
-- sample objects. Usage: lua5.1 argocd_health_test.lua HEALTH_CHECK.lua
local check = assert(loadfile(arg[1]))
local failed = 0

local function expect(name, obj, status)
  -- Argo CD runs the script with the object as the global `obj`.
  obj.metadata = obj.metadata or { generation = 1 }
  _G.obj = obj
  local hs = check()
  if hs.status == status then
    print("PASS " .. name .. " -> " .. status .. " (" .. tostring(hs.message) .. ")")
  else
    print("FAIL " .. name .. ": expected " .. status .. ", got " .. tostring(hs.status))
    failed = failed + 1
  end
end

local function cond(type_, status, reason)
  return { type = type_, status = status, reason = reason, message = type_ .. " is " .. status }
end

expect("no status yet", {}, "Progressing")
expect("Ready=True for the current generation",
  { status = { observedGeneration = 1, summary = "3/3 granted", conditions = { cond("Ready", "True"), cond("Stalled", "False") } } },
  "Healthy")
expect("Stalled=True wins over anything else",
  { status = { observedGeneration = 1, conditions = { cond("Ready", "False"), cond("Stalled", "True", "InvalidSpec") } } },
  "Degraded")
expect("Ready=False while reconciling",
  { status = { observedGeneration = 1, conditions = { cond("Ready", "False", "Propagating"), cond("Reconciling", "True") } } },
  "Progressing")
expect("Ready=True but for an older generation",
  { metadata = { generation = 2 }, status = { observedGeneration = 1, conditions = { cond("Ready", "True") } } },
  "Progressing")

os.exit(failed == 0 and 0 or 1)
