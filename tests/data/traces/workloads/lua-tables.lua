-- tables, strings and closures: a small interpreter workload
local t = {}
for i = 1, 20000 do
  t[i] = { id = i, name = "item" .. i, tags = {} }
  for j = 1, i % 7 do t[i].tags[j] = string.rep("x", j * 3) end
end
local parts = {}
for i = 1, #t, 3 do parts[#parts + 1] = t[i].name .. ":" .. #t[i].tags end
local s = table.concat(parts, ",")
local count = 0
for w in s:gmatch("item(%d+)") do count = count + tonumber(w) % 3 end
local m = {}
for i = 1, 30000 do m["k" .. (i % 5000)] = (m["k" .. (i % 5000)] or "") .. "." end
t = nil; collectgarbage()
local buf = ""
for i = 1, 3000 do buf = buf .. tostring(i) end
print(count, #s, #buf)
