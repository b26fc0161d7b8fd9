-- wrk script for the soak: a mix of pass-through requests, fresh logins (tokens from
-- $TOKENS, one per line, each used once), replays of one token, and garbage tokens.
local tokens = {}
for line in io.lines(os.getenv("TOKENS")) do tokens[#tokens + 1] = line end
local replayed = tokens[1]
local n, t = 0, 1
request = function()
  n = n + 1
  local k = n % 10
  if k < 6 then
    return wrk.format("GET", "/small")
  elseif k == 6 then
    t = t % #tokens + 1
    return wrk.format("GET", "/users/auth/jwt/callback?jwt=" .. tokens[t])
  elseif k == 7 then
    return wrk.format("GET", "/users/auth/jwt/callback?jwt=" .. replayed)
  elseif k == 8 then
    return wrk.format("GET", "/users/auth/jwt/callback?jwt=garbage." .. n .. ".x")
  else
    return wrk.format("POST", "/api/v4/echo", {["Content-Type"] = "application/json"}, '{"n":' .. n .. '}')
  end
end
