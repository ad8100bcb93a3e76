// tether console: progressive enhancement only (helper "pages" fills this in).
"use strict";
