-- wstap: what rides on WebSocket, decoded. Wireshark's WebSocket dissector hands a
-- message to the dissector its `ws.protocol` table names for the subprotocol the 101
-- agreed (Sec-WebSocket-Protocol); Wireshark 4.0 knows only sip, coap, BACnet and BLIP.
-- This plugin adds the subprotocols WebSocket applications most use:
--   mqtt, mqttv3.1          Wireshark's MQTT dissector (it takes a message as its PDU)
--   graphql-ws, graphql-transport-ws, ocpp1.2 … ocpp2.1, wamp.2.json, json
--                           Wireshark's JSON dissector (these speak JSON text)
--   v10.stomp, v11.stomp, v12.stomp, stomp
--                           STOMP: a small dissector below (command, headers, body)
-- Installed by `make install-wireshark-plugin` (and `make install-extcap`) into
-- Wireshark's personal Lua plugins folder; or run `tshark -X lua_script:THIS_FILE`.

local ws = DissectorTable.get("ws.protocol")

local function map(names, dissector)
    if dissector == nil then return end
    for _, name in ipairs(names) do
        ws:add(name, dissector)
    end
end

map({ "mqtt", "mqttv3.1" }, Dissector.get("mqtt"))
map({ "graphql-ws", "graphql-transport-ws", "ocpp1.2", "ocpp1.5", "ocpp1.6", "ocpp2.0", "ocpp2.0.1",
      "ocpp2.1", "wamp.2.json", "json" }, Dissector.get("json"))

-- STOMP 1.0-1.2: a frame is a command line, header lines, an empty line, a body, NUL.
local stomp = Proto("wstap_stomp", "STOMP (over WebSocket)")
local f_command = ProtoField.string("stomp.command", "Command")
local f_header = ProtoField.string("stomp.header", "Header")
local f_body = ProtoField.string("stomp.body", "Body")
stomp.fields = { f_command, f_header, f_body }

function stomp.dissector(tvb, pinfo, tree)
    local text = tvb:raw()
    local sub = tree:add(stomp, tvb())
    local at, line_no, command = 1, 0, nil
    while at <= #text do
        local eol = text:find("\n", at, true) or (#text + 1)
        local line = text:sub(at, eol - 1):gsub("\r$", "")
        local range = tvb(at - 1, eol - at)
        if line == "" and command ~= nil then
            local body = text:sub(eol + 1):gsub("%z$", "")
            if #body > 0 then sub:add(f_body, tvb(eol, #body), body) end
            break
        elseif line_no == 0 and line ~= "" then
            command = line
            sub:add(f_command, range, line)
        elseif line ~= "" then
            sub:add(f_header, range, line)
        end
        if line ~= "" then line_no = line_no + 1 end
        at = eol + 1
    end
    pinfo.cols.protocol = "STOMP"
    if command then pinfo.cols.info = command end
    return tvb:len()
end

map({ "v10.stomp", "v11.stomp", "v12.stomp", "stomp" }, stomp)
