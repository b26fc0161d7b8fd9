-- wrk script: each request takes the next token from $TOKENS (one per line), so every
-- callback carries a fresh token (distinct jti). Run it with one wrk thread (-t1).
local tokens = {}
for line in io.lines(os.getenv("TOKENS")) do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i + 1
  local t = tokens[(i % #tokens) + 1]
  return wrk.format("GET", "/users/auth/jwt/callback?jwt=" .. t)
end
